"""Accuracy through the device's own engine: ``trtexec --loadInputs`` / ``--exportOutput``.

The ``jetson`` target measures latency with ``trtexec`` on the device; this module runs the same
``.plan`` on real inputs there, so an FP16 / INT8 loss on the device is caught by the accuracy
floor instead of being hidden by an FP32 evaluation on the host.

Per chunk of at most the engine's batch (``max_batch`` for a dynamic batch, the ONNX's batch
otherwise): the chunk is written as a raw C-order file in the ONNX input's element type, copied
into the session folder, run once (``--iterations=1 --warmUp=0 --duration=0``) and the
``--exportOutput`` JSON is fetched and parsed. The JSON is what ``exportJSONOutput`` in
trtexec's ``sampleReporting.cpp`` writes: a list of ``{"name", "dimensions": "64x10",
"values": [...]}``, values printed with iostream defaults (6 significant digits; ``nan`` / ``inf``
unquoted, which is not JSON and is fixed up before parsing). Six digits are enough for top-1.

Cost: one ``trtexec`` start (engine deserialisation) per chunk, so ``max_batch: 1`` (the
default) evaluates one image per call; the runner says so once, with the fix.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from core.errors import StageError
from targets.onnx_facts import onnx_facts
from targets.trtexec.argv import infer_argv

log = logging.getLogger("pipeline.jetson")

SLOW_CALLS = 64  # more trtexec starts than this for one evaluation: say how to batch
_NONFINITE = re.compile(r"(?<![\w\"])(-?)(nan|inf)(?![\w\"])", re.IGNORECASE)


def parse_exported_output(text: str, name: str | None = None) -> np.ndarray:
    """The tensor called ``name`` (the first one if None) of a ``trtexec --exportOutput`` JSON."""
    try:
        data = json.loads(_NONFINITE.sub(lambda m: ("-" if m.group(1) else "") +
                                          ("NaN" if m.group(2).lower() == "nan" else "Infinity"), text))
    except json.JSONDecodeError as e:
        raise StageError(f"trtexec --exportOutput file is not JSON ({e.msg} at line {e.lineno})",
                         hint="see the trtexec log next to it in logs/") from None
    if not isinstance(data, list) or not data or not all(isinstance(t, dict) and "values" in t for t in data):
        raise StageError("trtexec --exportOutput file has no output tensors",
                         hint="expected a list of {name, dimensions, values}")
    by_name = {str(t.get("name")): t for t in data}
    t = by_name.get(name) if name is not None else None
    t = t or data[0]
    dims = [int(d) for d in str(t.get("dimensions", "")).split("x") if d.strip()]
    values = np.asarray(t["values"], dtype=np.float32)
    if dims and math.prod(dims) != values.size:
        raise StageError(f"trtexec output {t.get('name')!r}: {values.size} values for dimensions "
                         f"{t.get('dimensions')!r}", hint="a truncated --exportOutput file; run again")
    return values.reshape(dims) if dims else values


class TrtexecRunner:
    """``run(x) -> logits`` through ``engine_path`` on a device session (a context manager).

    Args:
        device: :class:`targets.ssh.Device` (remote or local session, same calls).
        engine_path: the built ``.plan`` on this machine.
        onnx_path: the ONNX it was built from (input / output names, dtype, static batch).
        trt_version: the device's TensorRT version (flags differ for 11).
        max_batch: the engine profile's largest batch (dynamic batch only).
        dla_core: the DLA core the engine was built for, if any.
        logs_dir: where each call's trtexec log and output JSON are kept.
    """

    def __init__(self, device, engine_path: Path, onnx_path: Path, trt_version: str, max_batch: int,
                 dla_core: int | None, logs_dir: Path) -> None:
        self.device, self.engine_path, self.trt_version = device, Path(engine_path), trt_version
        self.facts = onnx_facts(Path(onnx_path))
        self.batch = None if self.facts.dynamic_batch else int(self.facts.input_dims[0])  # None: dynamic
        self.chunk = self.batch or max(1, int(max_batch))
        self.dla_core, self.logs_dir = dla_core, Path(logs_dir)
        self.calls = 0
        self._stack: ExitStack | None = None
        self._session = None
        self._tmp: Path | None = None
        self._warned = False

    def __enter__(self) -> TrtexecRunner:
        self._stack = ExitStack()
        try:
            self._session = self._stack.enter_context(self.device.session())
            self._tmp = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="trt-eval-")))
            self._session.put(self.engine_path, "eval.plan")
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        assert self._stack is not None
        self._stack.close()

    def run(self, x: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise RuntimeError("TrtexecRunner.run outside its `with` block")
        x = np.ascontiguousarray(x)
        calls = math.ceil(len(x) / self.chunk)
        if not self._warned and self.chunk == 1 and len(x) > 1:
            self._warned = True
            log.warning("evaluating through the device engine one input per trtexec call (engine batch 1); "
                        "set target option max_batch: 32 to evaluate 32 per call")
        outs = [self._run_chunk(x[i * self.chunk:(i + 1) * self.chunk]) for i in range(calls)]
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)

    def _run_chunk(self, x: np.ndarray) -> np.ndarray:
        assert self._session is not None and self._tmp is not None
        s, n = self._session, len(x)
        if self.batch is not None and n < self.batch:  # static batch: pad, drop the padding after
            x = np.concatenate([x, np.zeros((self.batch - n, *x.shape[1:]), x.dtype)])
        tag = f"eval-{self.calls:05d}"
        self.calls += 1
        local_in = self._tmp / f"{tag}.bin"
        local_in.write_bytes(np.ascontiguousarray(x, dtype=self.facts.input_dtype).tobytes())
        s.put(local_in, "eval-in.bin")
        argv = infer_argv(self.trt_version, s.path("eval.plan"), self.facts.input_name, s.path("eval-in.bin"),
                          s.path("eval-out.json"), None if self.batch else x.shape, self.dla_core)
        s.run(["rm", "-f", s.path("eval-out.json")], 60, check=False)
        r = s.run(argv, check=False)
        if r.returncode != 0 or not s.exists("eval-out.json"):
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            (self.logs_dir / f"{self.engine_path.name}.{tag}.trtexec.log").write_text(r.stdout + r.stderr)
            tail = [ln for ln in (r.stdout + r.stderr).strip().splitlines() if ln.strip()] or ["no output"]
            raise StageError(f"trtexec could not run {self.engine_path.name} on real inputs on {self.device.name} "
                             f"(exit {r.returncode}): {tail[-1][:300]}",
                             hint=f"full log: logs/{self.engine_path.name}.{tag}.trtexec.log; "
                                  "target option accuracy_on: host evaluates through ONNX Runtime here instead")
        got = s.get("eval-out.json", self._tmp / f"{tag}.out.json")
        y = parse_exported_output(got.read_text(errors="replace"), self.facts.output_name)
        if y.ndim == 0 or y.shape[0] != len(x):
            raise StageError(f"trtexec returned {y.shape} for a batch of {len(x)}",
                             hint="the engine's output is not batch-major; use accuracy_on: host")
        return y[:n]
