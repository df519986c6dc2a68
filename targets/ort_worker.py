"""Measure ONNX models with ONNX Runtime in *this* process, print one JSON line.

Run as ``python -m targets.ort_worker ARGS_JSON``. The caller starts a fresh process for every
call, so no state of the parent (torch's thread pool, its memory) leaks into the numbers.

Two modes:

- ``"mode": "latency"``: load every model of ``models``, run one discarded warm-up round, then
  time them in interleaved rounds (A B A B ...), each round a short warm-up then at least
  ``min_duration_s`` and ``min_iters`` calls. Interleaving in one process is what makes a ratio between two models trustworthy on
  a machine whose speed drifts.
- ``"mode": "memory"``: load one model, run it a few times, report the peak RSS of this process
  (``VmHWM``). With no model, it reports the peak of a process that only imported the runtime:
  the baseline to subtract.

Only numpy and onnxruntime are imported, so the process is small and starts fast.
"""

from __future__ import annotations

import json
import sys
import time


def peak_rss_mb() -> float:
    """Peak RSS of this process's own address space (VmHWM; not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _session(path: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    t0 = time.perf_counter()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess, time.perf_counter() - t0


def _feed(sess, batch: int, sample_shape: list[int]):
    import numpy as np

    x = np.random.default_rng(0).standard_normal([batch, *sample_shape]).astype(np.float32)
    return {sess.get_inputs()[0].name: x}


def _time(sess, feed, warmup_s: float, min_s: float, min_n: int) -> tuple[list[float], float]:
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        sess.run(None, feed)
    samples: list[float] = []
    start = time.perf_counter()
    max_s = max(10 * min_s, 30.0)
    while True:
        t = time.perf_counter()
        sess.run(None, feed)
        now = time.perf_counter()
        samples.append((now - t) * 1e3)
        if (now - start >= min_s and len(samples) >= min_n) or now - start >= max_s:
            return samples, now - start


def latency(args: dict) -> dict:
    import onnxruntime as ort

    sessions, feeds, created, first = [], [], [], []
    for path in args["models"]:
        sess, secs = _session(path, args["threads"])
        feed = _feed(sess, int(args["batch"]), args["sample_shape"])
        t0 = time.perf_counter()
        sess.run(None, feed)
        first.append((time.perf_counter() - t0) * 1e3)
        sessions.append(sess)
        feeds.append(feed)
        created.append(secs)
    # one discarded round: the first model timed in a fresh process otherwise pays for the
    # thread pool's and the CPU's ramp-up (seen here: +50% on round 1)
    for sess, feed in zip(sessions, feeds):
        _time(sess, feed, float(args["warmup_s"]), float(args["warmup_s"]), 1)
    per_model: list[list[list[float]]] = [[] for _ in sessions]
    walls = [0.0 for _ in sessions]
    for _ in range(int(args["rounds"])):
        for i, (sess, feed) in enumerate(zip(sessions, feeds)):
            samples, wall = _time(sess, feed, float(args["warmup_s"]), float(args["min_duration_s"]),
                                  int(args["min_iters"]))
            per_model[i].append(samples)
            walls[i] += wall
    return {"rounds": per_model, "wall_s": walls, "session_create_s": created, "first_run_ms": first,
            "ort_version": ort.__version__}


def memory(args: dict) -> dict:
    import onnxruntime  # noqa: F401 - the baseline process imports the runtime too

    if not args.get("model"):
        return {"peak_rss_mb": peak_rss_mb()}
    sess, _ = _session(args["model"], args["threads"])
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
