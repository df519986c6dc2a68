"""Bad inputs: each ends with exit 2 and one error line plus one hint line, never a traceback; the user's files
are untouched, and a run folder it had begun stays consistent (a manifest that says which stage failed).
"""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tests.conftest import FAST_YAML

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "tests" / "data" / "policy_before_house.json"


def _policy_with(tmp: Path, edit) -> Path:
    d = json.loads(POLICY.read_text())
    edit(d["groups"]["layer3.0.shortcut.0"])
    p = tmp / "policy.json"
    p.write_text(json.dumps(d))
    return p


def _noinput_onnx(tmp: Path) -> Path:
    c = helper.make_node("Constant", [], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    g = helper.make_graph([c], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    p = tmp / "noinput.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(p))
    return p


def _pruned_naming(tmp: Path, spec: str) -> Path:
    p = tmp / "pruned.pt"
    torch.save({"format": "edge-pipeline/pruned-v1", "model_spec": spec, "plan": json.loads(POLICY.read_text()),
                "state_dict": {}}, p)
    return p


def _module(tmp: Path, name: str, body: str) -> str:
    (tmp / f"{name}.py").write_text(textwrap.dedent(body))
    return name


# (id, setup(tmp) -> args, the words the error line must hold)
CASES = [
    # the CLI framework's own errors
    ("mistyped-flag", lambda t: ["run", "--speedp", "2"], "No such option: --speedp"),
    ("bad-float", lambda t: ["run", "--speedup", "abc"], "Invalid value for '--speedup'"),
    ("missing-value", lambda t: ["run", "--speedup"], "requires an argument"),
    ("unknown-command", lambda t: ["frobnicate"], "No such command 'frobnicate'"),
    ("missing-argument", lambda t: ["report"], "Missing argument"),
    ("no-command", lambda t: [], "a command is needed"),
    ("measure-batch-0", lambda t: ["measure", "m.onnx", "--batch", "0"], "'--batch'"),
    ("measure-threads", lambda t: ["measure", "m.onnx", "--threads", "-1"], "'--threads'"),
    ("measure-duration", lambda t: ["measure", "m.onnx", "--duration", "-5"], "'--duration'"),
    # measure's inputs
    ("measure-nothing", lambda t: ["measure"], "give an ONNX file"),
    ("measure-missing", lambda t: ["measure", str(t / "nope.onnx")], "ONNX file not found"),
    ("measure-not-onnx", lambda t: ["measure", str(_text(t, "x.onnx", "hello"))], "is not an ONNX model"),
    ("measure-no-input", lambda t: ["measure", str(_noinput_onnx(t))], "has no graph input"),
    ("trtexec-log-missing", lambda t: ["measure", "--from-trtexec-log", str(t / "nope.log")], "file not found"),
    ("trtexec-log-not-a-log", lambda t: ["measure", "--from-trtexec-log", str(_text(t, "x.log", "hi\n"))],
     "trtexec"),
    # config files
    ("config-missing", lambda t: ["run", "--dry-run", "--config", str(t / "nope.yaml")], "config file not found"),
    ("yaml-syntax", lambda t: ["run", "--dry-run", "--config", str(_text(t, "c.yaml", "a: [1, 2\n"))],
     "YAML syntax error"),
    ("yaml-list", lambda t: ["run", "--dry-run", "--config", str(_text(t, "c.yaml", "- 1\n- 2\n"))],
     "top level must be a mapping"),
    ("yaml-unknown-key", lambda t: ["run", "--dry-run", "--config", str(_text(t, "c.yaml", "objectiv: latency\n"))],
     "unknown config key 'objectiv'"),
    ("yaml-alias-bomb", lambda t: ["run", "--dry-run", "--config", str(_text(t, "c.yaml", _bomb()))],
     "aliases"),
    ("yaml-expansion", lambda t: ["run", "--dry-run", "--config", str(_text(t, "c.yaml", _expansion()))],
     "once its aliases are expanded"),
    ("yaml-huge", lambda t: ["run", "--dry-run", "--config", str(_text(t, "c.yaml", "#" * (2 << 20)))],
     "not a run config"),
    ("yaml-section-type", lambda t: ["run", "--dry-run", "--config", str(_text(t, "c.yaml", "constraints: 5\n")),
                                     "--speedup", "2"], "constraints must be a mapping"),
    ("yaml-trust", lambda t: ["run", "--dry-run", "--config", str(_text(t, "c.yaml", "trust_checkpoint: true\n"))],
     "command line"),
    # values
    ("latency-inf", lambda t: ["run", "--dry-run", "--latency-ms", "inf"], "finite number"),
    ("speedup-nan", lambda t: ["run", "--dry-run", "--speedup", "nan"], "finite number"),
    ("speedup-below-1", lambda t: ["run", "--dry-run", "--speedup", "0.5"], "speedup must be >= 1.0"),
    ("two-latency-forms", lambda t: ["run", "--dry-run", "--config", str(_text(t, "c.yaml", "constraints: "
                                     "{latency_ms: 1, speedup: 2}\n"))], "either latency_ms or speedup"),
    ("negative-drop", lambda t: ["run", "--dry-run", "--max-accuracy-drop", "-3"], "--max-accuracy-drop"),
    ("huge-input-shape", lambda t: ["run", "--dry-run", "--input-shape", "3,100000,100000"], "a typo?"),
    ("bad-input-shape", lambda t: ["run", "--dry-run", "--input-shape", "3,a,3"], "bad --input-shape"),
    ("memory-without-budget", lambda t: ["run", "--dry-run", "--objective", "memory"], "needs constraints.memory_mb"),
    # names
    ("unknown-search", lambda t: ["run", "--dry-run", "--search", "optuma"], "Did you mean 'optuna'"),
    ("greedy-memory", lambda t: ["run", "--dry-run", "--search", "greedy", "--objective", "memory", "--memory-mb",
                                 "10"], "search 'greedy' needs objective latency"),
    ("unknown-criterion", lambda t: ["run", "--dry-run", "--criterion", "wandaa"], "Did you mean 'wanda'"),
    ("unknown-criterion-option", lambda t: ["run", "--dry-run", "--criterion-option", "bogus=1"], "has no option"),
    ("criterion-option-form", lambda t: ["run", "--dry-run", "--criterion-option", "noequals"],
     "bad --criterion-option"),
    ("unknown-target", lambda t: ["run", "--dry-run", "--target", "cpuu"], "Did you mean 'cpu'"),
    ("bad-target-value", lambda t: ["run", "--dry-run", "--target-option", "graph_optimization=al"],
     "graph_optimization 'al'"),
    ("unknown-target-option", lambda t: ["run", "--dry-run", "--target-option", "foo=1"], "does not accept option"),
    ("unknown-model-source", lambda t: ["run", "--dry-run", "--model", "foo:bar"], "unknown model source 'foo'"),
    ("model-file-missing", lambda t: ["run", "--dry-run", "--model", f"file:{t / 'nope.pt'}"], "model file not found"),
    ("imagefolder-missing", lambda t: ["run", "--dry-run", "--data", f"imagefolder:{t / 'nope'}"],
     "imagefolder path not found"),
    ("unknown-data-source", lambda t: ["run", "--dry-run", "--data", "digitz"], "Did you mean 'digits'"),
    ("unknown-torchvision", lambda t: ["run", "--dry-run", "--model", "torchvision:resnet99"],
     "unknown torchvision model 'resnet99'"),
    ("unknown-example", lambda t: ["run", "--dry-run", "--model", "example:minlm"], "Did you mean 'minilm'"),
    ("unknown-arch", lambda t: ["run", "--dry-run", "--model", f"file:{_text(t, 'w.pt', '')}", "--arch",
                                "torchvision:resnet1"], "unknown torchvision model 'resnet1'"),
    ("hf-folder-missing", lambda t: ["run", "--dry-run", "--model", f"hf:{t / 'nope'}"], "not a folder"),
    ("python-model-missing", lambda t: ["run", "--dry-run", "--model", "python:no_such_module_x:f"],
     "cannot import module 'no_such_module_x'"),
    ("python-data-attr", lambda t: ["run", "--dry-run", "--data", "python:json:lods"], "Did you mean 'loads'"),
    ("text-file-missing", lambda t: ["run", "--dry-run", "--data", f"text:{t / 'nope.txt'}"], "text file not found"),
    # policies
    ("policy-missing", lambda t: ["run", "--dry-run", "--policy", str(t / "nope.json")], "policy file not found"),
    ("policy-not-json", lambda t: ["run", "--dry-run", "--policy", str(_text(t, "p.json", "{oops"))],
     "not valid JSON"),
    ("policy-out-of-range", lambda t: ["run", "--dry-run", "--policy",
                                       str(_policy_with(t, lambda g: g["keep_idxs"].append(999)))], "out of range"),
    ("policy-duplicates", lambda t: ["run", "--dry-run", "--policy",
                                     str(_policy_with(t, lambda g: g.update(keep_idxs=[0] * 72)))], "repeat channels"),
    ("policy-string-index", lambda t: ["run", "--dry-run", "--policy",
                                       str(_policy_with(t, lambda g: g["keep_idxs"].__setitem__(0, "a")))],
     "must be integers"),
    ("policy-missing-key", lambda t: ["run", "--dry-run", "--policy",
                                      str(_policy_with(t, lambda g: g.pop("keep_idxs")))], "needs 'width' and 'keep_idxs'"),
    # run folders
    ("resume-without-out", lambda t: ["run", "--resume"], "--resume needs --out"),
    ("resume-nothing", lambda t: ["run", "--resume", "--out", str(t / "empty")], "nothing to resume"),
]


def _text(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def _bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _expansion() -> str:
    """30 aliases that double a list each time: 2^29 references once expanded."""
    lines, prev = ["criterion_options:", "  a: &a [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]"], "a"
    for i in range(1, 30):
        lines.append(f"  k{i}: &k{i} [*{prev}, *{prev}]")
        prev = f"k{i}"
    return "\n".join(lines) + "\n"


def _hashes(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def _one_error(err: str, words: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 2, err
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: "), err
    assert words in lines[0], (words, err)


def test_the_suite_covers_at_least_forty_bad_inputs():
    assert len({c[0] for c in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("name, setup, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(cli, tmp_path, monkeypatch, name, setup, words):
    monkeypatch.chdir(tmp_path)
    args = setup(tmp_path)
    before = _hashes(tmp_path)
    rc, _, err = cli(*args)
    assert rc == 2, err
    _one_error(err, words)
    assert _hashes(tmp_path) == before  # the user's files untouched, and no run folder appeared
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ bad inputs found while running (load stage)

def _fast(tmp: Path, extra: str = "") -> Path:
    return _text(tmp, "fast.yaml", FAST_YAML + extra)


RUN_CASES = [
    ("corrupt-checkpoint", lambda t: ["--model", f"file:{_text(t, 'rand.pt', 'not a checkpoint at all')}",
                                      "--arch", "example:digits-resnet"], "not a readable PyTorch checkpoint"),
    ("pickled-module", lambda t: ["--model", f"file:{_saved_module(t)}", "--input-shape", "4"],
     "contains pickled Python objects"),
    ("pruned-names-python", lambda t: ["--model", f"file:{_pruned_naming(t, 'python:os:getcwd')}"],
     "would import and run code"),
    ("factory-not-a-module", lambda t: ["--model", "python:os:getcwd"], "expected an nn.Module"),
    ("factory-exits-0", lambda t: ["--model", f"python:{_module(t, 'exits', _EXITS)}:build"], "sys.exit(0)"),
    ("one-class-labels", lambda t: ["--data", f"python:{_module(t, 'oneclass', _ONE_CLASS)}:data"],
     "labels of one class only"),
    ("ignore-unknown-module", lambda t: ["--config", str(_fast(t, "prune: {ignore: [nope]}\n"))],
     "prune.ignore names modules"),
    ("policy-wrong-model", lambda t: ["--policy", str(_policy_renamed(t))], "not a prunable group"),
]

_EXITS = """
import sys


def build():
    sys.exit(0)
"""

_ONE_CLASS = """
import torch
from torch.utils.data import TensorDataset


def data(shape):
    x = torch.randn(64, *shape)
    y = torch.zeros(64, dtype=torch.long)
    return {"train": TensorDataset(x, y), "calib": TensorDataset(x, y), "test": TensorDataset(x, y)}
"""


def _saved_module(tmp: Path) -> Path:
    p = tmp / "module.pt"
    torch.save(torch.nn.Linear(4, 2), p)
    return p


def _policy_renamed(tmp: Path) -> Path:
    d = json.loads(POLICY.read_text())
    d["groups"]["not.a.group"] = d["groups"].pop("layer3.0.shortcut.0")
    p = tmp / "policy.json"
    p.write_text(json.dumps(d))
    return p


@pytest.mark.parametrize("name, setup, words", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_bad_input_found_by_the_load_stage_stops_the_run_consistently(cli, tmp_path, monkeypatch, name, setup, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = setup(tmp_path)
    before = _hashes(tmp_path)
    out = tmp_path / "run"
    rc, _, err = cli("run", "--config", str(_fast(tmp_path)), *args, "--out", out, "-q") if "--config" not in args \
        else cli("run", *args, "--out", out, "-q")
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and lines[-2].startswith("error: ") and lines[-1].startswith("hint: "), err
    assert words in lines[-2], (words, err)
    after = _hashes(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("run/") and k != "fast.yaml"} == \
        {k: v for k, v in before.items() if k != "fast.yaml"}
    manifest = json.loads((out / "manifest.json").read_text())  # the folder says what happened
    stages = {s["name"]: s["status"] for s in manifest["stages"]}
    assert stages == {"load": "failed"} and not [p for p in out.iterdir() if p.name.startswith(".") and
                                                 p.name != ".pipeline.lock"]
    sys.modules.pop("exits", None)
    sys.modules.pop("oneclass", None)
