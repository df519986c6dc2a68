"""Target ``jetson``: build and measure with ``trtexec`` (+ ``tegrastats``) on a Jetson.

Two ways to reach the device, one code path (:mod:`targets.ssh`):

- ``--device user@host[:port]``: from a host (an x86 CI runner) over SSH;
- no ``--device``, on the Jetson itself: the same commands through a local session.

Per build: probe the device once (module, L4T -> JetPack, ``nvpmodel -q`` mode name,
``jetson_clocks --show``, the trtexec banner's TensorRT version), copy the ONNX (and the timing
cache) to a per-call folder, run ``trtexec --onnx ... --saveEngine --timingCacheFile
--skipInference`` with precision flags for TRT <= 10 (none on TRT >= 11, strongly typed), fetch
the plan, save it plain with a sidecar JSON.

Per measurement: copy the plans, then for each round and engine (interleaved) run
``trtexec --loadEngine ... --exportTimes`` with ``tegrastats --interval 100 --logfile`` beside it,
fetch the JSON and the log, and parse them with :mod:`targets.trtexec.log` and
:mod:`targets.tegrastats`. Latency is the per-inference ``computeMs`` of ``--exportTimes``
(GPU compute; the same meaning on TRT 10 and 11); memory comes from trtexec's execution-context
device memory, else tegrastats' RAM growth (unified memory).

Accuracy (``runner``) runs through the measured engine on the device by default
(:mod:`targets.trtexec.infer`: ``trtexec --loadInputs / --exportOutput`` on real inputs, chunked to
the engine's batch), so an FP16 / INT8 loss on the device counts against the accuracy floor.
``accuracy_on: host`` evaluates the ONNX with ONNX Runtime on the host instead (FP32; faster where
the engine's batch is 1). Every record says which (``accuracy_on``).

``runtime: ort`` measures without TensorRT: the ``cpu`` target's ONNX Runtime worker
(:class:`targets.ort.remote.OrtOnDevice`, CPU execution provider) runs on the device through the same
session, next to the same probe (module, L4T, power mode, clocks; trtexec is not required). It is
for a Jetson whose container has no TensorRT, and for Raspberry Pi-class boards. TensorRT builder
options are refused with it, and the device need not be a Jetson (a warning says when it does
not look like one).
"""

from targets.jetson.probe import (
    ACCURACY_ON,
    PROBE_SCRIPT,
    RUNTIMES,
    DeviceInfo,
    check_jetson_options,
    check_profile_options,
    parse_probe,
)
from targets.jetson.target import JetsonTarget, make_jetson
from targets.trtexec.argv import BuildCommand, measure_argv, shape_arg, tegrastats_argv, tensor_arg

__all__ = ["ACCURACY_ON", "PROBE_SCRIPT", "RUNTIMES", "BuildCommand", "DeviceInfo", "JetsonTarget",
           "check_jetson_options", "check_profile_options", "make_jetson", "measure_argv", "parse_probe", "shape_arg",
           "tegrastats_argv", "tensor_arg"]
