"""Measure ONNX models with ONNX Runtime in *this* process, print one JSON line.

Run as ``python -m targets.ort.worker ARGS_JSON``. The caller starts a fresh process for every
call, so no state of the parent (torch's thread pool, its memory) leaks into the numbers.

Two modes:

- ``"mode": "latency"``: load every model of ``models`` and time them with the protocol of
  :mod:`targets.timing` (one discarded warm-up round, then interleaved rounds A B A B ..., each
  a short warm-up then at least ``min_duration_s`` and ``min_iters`` calls). Interleaving in one
  process is what makes a ratio between two models trustworthy on a machine whose speed drifts.
- ``"mode": "memory"``: load one model, run it a few times, report the peak RSS of this process
  (``VmHWM``). With no model, it reports the peak of a process that only imported the runtime:
  the baseline to subtract.

Only numpy, onnxruntime and the standard-library timing protocol are imported, so the process is
small and starts fast.
"""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

if __package__:
    from targets.timing import Prepared, WallTimer, interleave
else:  # a script on a device, next to a copy of targets/timing.py
    from timing import Prepared, WallTimer, interleave


def peak_rss_mb() -> float:
    """Peak RSS of this process's own address space (VmHWM; not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
          "disable": "ORT_DISABLE_ALL"}


def _session(path: str, threads: int, optimization: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[optimization])
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    ort.set_default_logger_severity(3)  # graph-optimizer warnings go to the default logger
    t0 = time.perf_counter()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess, time.perf_counter() - t0


_NUMPY_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
                "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


def feed_of(inputs, x):
    """A packed batch (``stages.model.contract``) as a session's feed: one input takes ``x``; several of one
    shape and type take ``x[:, i]`` each (stacked); several of different shapes or types take their slice of
    each flattened row, in order, reshaped (flat). Every array is cast to its input's type. ``inputs`` are
    ``session.get_inputs()``."""
    import numpy as np

    def cast(a, inp):
        return np.ascontiguousarray(a, dtype=_NUMPY_TYPES.get(inp.type, "float32"))

    if len(inputs) == 1:
        return {inputs[0].name: cast(x, inputs[0])}
    if all((list(i.shape[1:]), i.type) == (list(inputs[0].shape[1:]), inputs[0].type) for i in inputs):
        return {inp.name: cast(x[:, i], inp) for i, inp in enumerate(inputs)}
    rows, feed, at = np.asarray(x).reshape(len(x), -1), {}, 0
    for inp in inputs:
        dims = [int(d) for d in inp.shape[1:]]
        n = int(np.prod(dims)) if dims else 1
        feed[inp.name] = cast(rows[:, at:at + n].reshape(len(x), *dims), inp)
        at += n
    return feed


def _feed(sess, batch: int, sample_shape: list[int]):
    """A timing batch: Gaussian floats, or ones for integer (token) inputs (every token id valid)."""
    import numpy as np

    inputs = sess.get_inputs()
    if any(not _NUMPY_TYPES.get(i.type, "float32").startswith("float") for i in inputs):
        x = np.ones([batch, *sample_shape], dtype=np.int64)
    else:
        x = np.random.default_rng(0).standard_normal([batch, *sample_shape]).astype(np.float32)
    return feed_of(inputs, x)


def latency(args: dict) -> dict:
    import onnxruntime as ort

    runs = []
    for path in args["models"]:
        sess, secs = _session(path, args["threads"], args.get("optimization", "all"))
        feed = _feed(sess, int(args["batch"]), args["sample_shape"])
        t0 = time.perf_counter()
        sess.run(None, feed)
        first = (time.perf_counter() - t0) * 1e3
        runs.append(Prepared(lambda sess=sess, feed=feed: sess.run(None, feed), secs, first))
    settings = SimpleNamespace(warmup_s=float(args["warmup_s"]), min_duration_s=float(args["min_duration_s"]),
                               min_iters=int(args["min_iters"]))
    return {**interleave(runs, settings, int(args["rounds"]), WallTimer()), "ort_version": ort.__version__,
            "graph_optimization": args.get("optimization", "all")}


def memory(args: dict) -> dict:
    import onnxruntime  # noqa: F401 - the baseline process imports the runtime too

    if not args.get("model"):
        return {"peak_rss_mb": peak_rss_mb()}
    sess, _ = _session(args["model"], args["threads"], args.get("optimization", "all"))
    feed = _feed(sess, int(args["batch"]), args["sample_shape"])
    for _ in range(5):
        sess.run(None, feed)
    return {"peak_rss_mb": peak_rss_mb()}


def main() -> None:
    args = json.loads(sys.argv[1])
    try:
        out = latency(args) if args.get("mode") == "latency" else memory(args)
    except Exception as e:  # noqa: BLE001 - report any runtime failure as data to the parent
        out = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
