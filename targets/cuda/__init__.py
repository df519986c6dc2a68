"""Target ``cuda``: latency and memory on an NVIDIA GPU, timed with CUDA events.

Two runtimes (target option ``runtime``):

- ``torch`` (default): the torch module itself on the GPU, eager or replayed from a CUDA graph
  (``graphs: true``: ``torch.cuda.CUDAGraph`` capture after a warm-up on a side stream, then
  ``replay()``), in fp32 or fp16 (``model.half()`` and half inputs), optionally channels-last.
  Every call is bracketed by two ``torch.cuda.Event(enable_timing=True)`` on the current stream
  and synchronised on the second one, so a sample is one call's latency as the GPU saw it
  (eager: including the gaps where the GPU waits for Python to launch the next kernel).
- ``ort``: the ONNX file through ONNX Runtime's ``CUDAExecutionProvider`` (``onnxruntime-gpu``),
  inputs and outputs bound on the GPU (IOBinding), optionally with the EP's CUDA graphs. ONNX
  Runtime runs on its own stream, so a sample is the wall time of ``run_with_iobinding``, which
  returns after the EP synchronised its stream.

The torch runtime measures a torch module, not the ONNX: ``build(onnx_path, ..., module=m)``
(the pipeline's build and measure stages hand the module they exported; see
``Target.build_inputs``) or :meth:`CudaTarget.build_module` from the Python API. The engine is a
snapshot (a deep copy) of the module. An ONNX file without a module is refused with a hint:
``runtime=ort`` measures ONNX files.

Engines measured together are interleaved round by round (A B A B ...) in this process, after a
discarded warm-up round, with the one protocol of :mod:`targets.timing`, and the records carry
``ratio_to_first`` exactly like the ``cpu`` target's (:func:`targets.timing.timing_records`). Memory is probed per engine alone before
the latency rounds: torch: growth of ``torch.cuda.max_memory_allocated`` over the allocation
before the model was moved to the GPU (weights + activations + CUDA-graph pool), with the peak of
``torch.cuda.max_memory_reserved`` (the caching allocator's pool) beside it; ort: growth of the
device's used memory (``cudaMemGetInfo``, device-wide) across session creation and a few runs.
The CUDA context itself (hundreds of MB) is not counted.

Accuracy (``runner``) runs through the same runtime and precision that was measured.

``torch.cuda`` and ``onnxruntime`` are imported inside functions; option checks, the timing
loops and the record assembly are plain Python and are tested without a GPU.

Modules: :mod:`~targets.cuda.options` (settings, availability), :mod:`~targets.cuda.torch_rt`
(the torch runtime), :mod:`~targets.cuda.ort_rt` (the ONNX Runtime CUDA EP runtime),
:mod:`~targets.cuda.target` (the target and its records).
"""

from targets.cuda.options import (
    CudaSettings,
    ort_cuda_unavailable_reason,
    ort_numpy_type,
    output_shape,
    torch_cuda_unavailable_reason,
    unavailable_reason,
)
from targets.cuda.ort_rt import OrtCudaRunner, ort_memory, prepare_ort
from targets.cuda.target import CudaTarget, cuda_records, make_cuda
from targets.cuda.torch_rt import TorchCudaRunner, prepare_torch, torch_memory

__all__ = ["CudaSettings", "CudaTarget", "OrtCudaRunner", "TorchCudaRunner", "cuda_records",
           "make_cuda", "ort_cuda_unavailable_reason", "ort_memory", "ort_numpy_type", "output_shape", "prepare_ort",
           "prepare_torch", "torch_cuda_unavailable_reason", "torch_memory", "unavailable_reason"]
