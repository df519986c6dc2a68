"""ONNX Runtime on the CPU: the in-process runner, the measuring worker, the ``cpu`` target (here or over SSH)."""
