"""Model and data specs, and every bad-input case of the load stage."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from core.errors import ModelLoadError, SpecError
from stages.load.data import load_data, with_model_labels
from stages.load.models import ModelRequest, load_model


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_embedded_default_is_accurate():
    from stages.load.train_digits import evaluate

    lm = load_model(ModelRequest("example:digits-resnet"))
    data = load_data("digits", lm.input_shape)
    assert evaluate(lm.module, data.test) >= 95.0
    assert [len(data.train), len(data.calib), len(data.test)] == [1000, 347, 450]


def test_digits_split_is_fixed():
    a, b = load_data("digits", None), load_data("digits", None)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert a.input_shape == (1, 32, 32)


def test_torchvision_random_init_no_download(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    lm = load_model(ModelRequest("torchvision:mobilenet_v2"))
    assert lm.input_shape == (3, 224, 224)
    assert any("random init" in n for n in lm.notes)


def test_timm_model_loads():
    lm = load_model(ModelRequest("timm:resnet18"))
    assert lm.input_shape == (3, 224, 224)


def test_unknown_specs_suggest(tmp_path):
    with pytest.raises(SpecError, match="Did you mean 'resnet18'"):
        load_model(ModelRequest("torchvision:resnet1"))
    with pytest.raises(SpecError, match="Did you mean 'torchvision'"):
        load_model(ModelRequest("torchvison:resnet18"))
    with pytest.raises(SpecError, match="Did you mean 'digits-resnet'"):
        load_model(ModelRequest("example:digit-resnet"))
    with pytest.raises(SpecError, match="Did you mean 'digits'"):
        load_data("digit", None)


def test_file_state_dict_with_arch(tmp_path):
    from stages.load.models import digits_resnet

    p = tmp_path / "w.pt"
    torch.save(digits_resnet().state_dict(), p)
    before = sha(p)
    lm = load_model(ModelRequest(f"file:{p}", arch="example:digits-resnet"))
    assert lm.spec == f"file:{p}" and lm.input_shape == (1, 32, 32)
    assert sha(p) == before  # the user's file is never modified


def test_file_state_dict_without_arch(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(nn.Linear(2, 2).state_dict(), p)
    with pytest.raises(SpecError, match="--arch"):
        load_model(ModelRequest(f"file:{p}"))


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(ModelRequest(f"file:{tmp_path / 'missing.pt'}", arch="example:digits-resnet"))


def test_truncated_checkpoint(tmp_path):
    from stages.load.models import digits_resnet

    p = tmp_path / "w.pt"
    torch.save(digits_resnet().state_dict(), p)
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="not a readable PyTorch checkpoint"):
        load_model(ModelRequest(f"file:{p}", arch="example:digits-resnet"))


def test_state_dict_that_does_not_fit(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(load_model(ModelRequest("torchvision:resnet18")).module.state_dict(), p)
    with pytest.raises(ModelLoadError, match="does not fit architecture 'example:digits-resnet'"):
        load_model(ModelRequest(f"file:{p}", arch="example:digits-resnet"))


def test_pickled_module_needs_trust(tmp_path):
    p = tmp_path / "m.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), p)
    with pytest.raises(ModelLoadError, match="--trust-checkpoint"):
        load_model(ModelRequest(f"file:{p}", input_shape=(4,)))
    lm = load_model(ModelRequest(f"file:{p}", input_shape=(4,), trust_checkpoint=True))
    assert isinstance(lm.module, nn.Sequential)


def test_nan_weights_rejected(tmp_path):
    from stages.load.models import digits_resnet

    sd = digits_resnet().state_dict()
    sd["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    p = tmp_path / "w.pt"
    torch.save(sd, p)
    with pytest.raises(ModelLoadError, match="NaN/inf values in layer2.0.conv1.weight"):
        load_model(ModelRequest(f"file:{p}", arch="example:digits-resnet"))


class Picky(nn.Module):
    def forward(self, x):
        if x.shape[-1] != 7:
            raise ValueError("expected width 7")
        return x.mean(-1)


def picky():
    return Picky()


def test_forward_failure_is_reported():
    with pytest.raises(ModelLoadError, match="fails on an example input.*expected width 7"):
        load_model(ModelRequest("python:tests.stages.test_load:picky", input_shape=(3, 5)))


def test_python_model_and_data_specs():
    lm = load_model(ModelRequest("python:tests.stages.test_load:picky", input_shape=(3, 7)))
    assert lm.input_shape == (3, 7)
    with pytest.raises(SpecError, match="has no attribute 'pickyy'.*Did you mean 'picky'"):
        load_model(ModelRequest("python:tests.stages.test_load:pickyy", input_shape=(3, 7)))


def test_random_data_gives_fidelity_labels():
    lm = load_model(ModelRequest("example:digits-resnet"))
    d = with_model_labels(load_data("random", lm.input_shape), lm.module)
    assert d.metric == "agreement" and not d.labeled  # "fidelity" is its alias
    x, y = d.test.tensors
    with torch.no_grad():
        assert torch.equal(lm.module(x[:32]).argmax(1), y[:32])


def test_random_data_needs_shape():
    with pytest.raises(SpecError, match="input shape"):
        load_data("random", None)


def test_digits_rejects_other_shapes():
    with pytest.raises(SpecError, match="--data random"):
        load_data("digits", (3, 224, 224))


def test_imagefolder(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(8):
            Image.new("RGB", (40, 30), color=(i * 20, 100 if c == "cat" else 0, 50)).save(tmp_path / c / f"{i}.png")
    d = load_data(f"imagefolder:{tmp_path}", (3, 32, 32))
    assert len(d.train) + len(d.calib) + len(d.test) == 16
    x, y = d.test[0]
    assert tuple(x.shape) == (3, 32, 32) and y in (0, 1)
    with pytest.raises(SpecError, match="not found"):
        load_data(f"imagefolder:{tmp_path / 'nope'}", (3, 32, 32))
