"""A deterministic stand-in for the candidate evaluator, and a worker process built on it.

``FakeEvaluator`` has the interface the optuna search uses (``measure_policy``, ``recover``,
``groups``) and a cost model with a known answer: a ResNet-20-like set of groups where the last
stage holds most of the latency and little of the accuracy, so a per-family search should prune
``layer3`` hardest. It imports neither torch nor a runtime, so worker processes start fast.

``python -m tests.search.optuna_fake_worker --study NAME --storage URL [--n-trials N]`` runs
:func:`pipeline.worker.run_worker` with it and prints one JSON line: who it was and
which trials it told.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from search.base import Candidate


@dataclass(frozen=True)
class FakeGroup:
    id: str
    width: int
    out_layers: tuple[str, ...]
    in_layers: tuple[str, ...] = ()


def resnet20_groups() -> list[FakeGroup]:
    """The 12 groups of the default ResNet-20 (ids, widths and residual coupling as Torch-Pruning lists them)."""
    g = [FakeGroup("conv1", 32, ("conv1", "bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"))]
    for s, w in ((2, 64), (3, 128)):
        g.append(FakeGroup(f"layer{s}.0.shortcut.0", w, (f"layer{s}.0.shortcut.0", f"layer{s}.0.shortcut.1",
                                                          *(f"layer{s}.{b}.bn2" for b in range(3)))))
    for s, w in ((1, 32), (2, 64), (3, 128)):
        for b in range(3):
            g.append(FakeGroup(f"layer{s}.{b}.conv1", w, (f"layer{s}.{b}.conv1", f"layer{s}.{b}.bn1"),
                               (f"layer{s}.{b}.conv2",)))
    return g


# per-stage share of the latency and of the accuracy loss (layer3: slow and robust)
LAT_SHARE = {"conv1": 0.05, "layer1": 0.10, "layer2": 0.25, "layer3": 0.60}
ACC_SENS = {"conv1": 30.0, "layer1": 20.0, "layer2": 10.0, "layer3": 3.0}


def _stage(gid: str) -> str:
    return gid.split(".")[0]


class FakeEvaluator:
    """latency = 0.2 + 1.0 * sum(share * kept fraction^1.5) ms; accuracy loses sens * (pruned fraction)^2.

    Args:
        round_to: Channel rounding (large values make many ratios land on the same widths).
        delay_s: Sleep per new architecture (so concurrent workers overlap).
        fail_if: Keep ratios -> True makes ``measure_policy`` raise (a broken candidate).
        latency_scale: Multiplies every latency (another machine, or a lucky measurement).
    """

    def __init__(self, round_to: int = 8, delay_s: float = 0.0, fail_if=None, latency_scale: float = 1.0) -> None:
        self.groups = resnet20_groups()
        self.round_to, self.delay_s, self.fail_if = round_to, delay_s, fail_if
        self.latency_scale = latency_scale
        self._cache: dict[tuple, Candidate] = {}
        self.measured: list[tuple] = []  # keys of architectures actually measured, in order
        self.recovered: list[tuple] = []

    def _kept(self, width: int, ratio: float) -> int:
        if ratio >= 1.0:
            return width
        n = math.floor(width * ratio / self.round_to + 0.5) * self.round_to
        return max(min(width, self.round_to), min(width, n))

    def measure_policy(self, keep_ratios: Mapping[str, float], policy: Mapping[str, object],
                       ratio: float | None = None) -> Candidate:
        if self.fail_if is not None and self.fail_if(keep_ratios):
            raise RuntimeError("fake export failure")
        kept = {g.id: self._kept(g.width, float(keep_ratios.get(g.id, 1.0))) for g in self.groups}
        key = tuple(sorted(kept.items()))
        if key in self._cache:
            return self._cache[key]
        if self.delay_s:
            time.sleep(self.delay_s)
        self.measured.append(key)
        per_stage: dict[str, list[float]] = {}
        for g in self.groups:
            per_stage.setdefault(_stage(g.id), []).append(kept[g.id] / g.width)
        lat = self.latency_scale * (0.2 + sum(LAT_SHARE[s] * (sum(v) / len(v)) ** 1.5 for s, v in per_stage.items()))
        loss = sum(ACC_SENS[s] * (1 - sum(v) / len(v)) ** 2 for s, v in per_stage.items())
        total = sum(g.width for g in self.groups)
        removed = 1 - sum(kept.values()) / total
        mem = 5.0 + 20.0 * sum(kept.values()) / total
        c = Candidate(removed if ratio is None else ratio, key, lat, mem, 99.0 - loss, int(1e6 * (1 - removed)),
                      int(1e5 * (1 - removed)), speedup=1.2 / lat, policy=dict(policy),
                      payload={"plan": dict(kept), "raw_latency_ms": lat})
        self._cache[key] = c
        return c

    def recover(self, c: Candidate) -> float:
        self.recovered.append(c.key)
        return 99.0 - 0.4 * (99.0 - c.accuracy_oneshot)


def main(argv: list[str] | None = None) -> int:
    from pipeline.worker import run_worker

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--n-trials", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--delay", type=float, default=0.05)
    ap.add_argument("--heartbeat", type=int, default=None)
    ap.add_argument("--barrier", default=None, help="folder: wait until --parties workers are ready, then start")
    ap.add_argument("--parties", type=int, default=2)
    a = ap.parse_args(argv)
    me = f"{socket.gethostname()}:{os.getpid()}"

    def factory(attrs, workdir, device=None, log=None) -> FakeEvaluator:
        if a.barrier:  # start together, so the workers really compete for trials
            Path(a.barrier, str(os.getpid())).touch()
            deadline = time.monotonic() + 120
            while len(list(Path(a.barrier).iterdir())) < a.parties and time.monotonic() < deadline:
                time.sleep(0.02)
        return FakeEvaluator(delay_s=a.delay)

    n, why = run_worker(a.study, a.storage, a.n_trials, a.timeout, heartbeat_s=a.heartbeat,
                        evaluator_factory=factory, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps({"worker": me, "trials": n, "reason": why}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
