"""Pure parts of accuracy through the device engine: trtexec argv and its --exportOutput JSON."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import StageError
from targets.trtexec.infer import infer_argv, parse_exported_output

# The layout exportJSONOutput (trtexec, samples/common/sampleReporting.cpp) writes; text written for the test.
EXPORTED = """[
  { "name" : "logits"
  , "dimensions" : "2x3"
  , "values" : [ 1.5, -2, 3.25e-07, 4, nan, -inf ]
  }
, { "name" : "aux"
  , "dimensions" : "2"
  , "values" : [ 7, 8 ]
  }
]
"""


def test_export_output_parses_by_name_with_nonfinite_values():
    y = parse_exported_output(EXPORTED, "logits")
    assert y.shape == (2, 3) and y.dtype == np.float32
    assert y[0].tolist() == pytest.approx([1.5, -2.0, 3.25e-07])
    assert np.isnan(y[1, 1]) and y[1, 2] == -np.inf
    assert parse_exported_output(EXPORTED, "aux").tolist() == [7, 8]
    assert parse_exported_output(EXPORTED, "not-there").shape == (2, 3)  # first tensor when the name is unknown


@pytest.mark.parametrize("text, msg", [
    ("Cuda failure: out of memory", "not JSON"),
    ("[]", "no output tensors"),
    ('[ { "name" : "y", "dimensions" : "2x3", "values" : [ 1, 2 ] } ]', "2 values for dimensions '2x3'"),
])
def test_bad_export_output_is_one_clear_error(text, msg):
    with pytest.raises(StageError, match=msg):
        parse_exported_output(text, "y")


def test_infer_argv_per_version_and_batch_kind():
    dyn10 = infer_argv("10.3.0", "/r/e.plan", "input", "/r/in.bin", "/r/out.json", (8, 3, 64, 64))
    assert dyn10[1:] == ["--loadEngine=/r/e.plan", "--loadInputs=input:/r/in.bin", "--exportOutput=/r/out.json",
                         "--iterations=1", "--warmUp=0", "--duration=0", "--shapes=input:8x3x64x64"]
    static11 = infer_argv("11.0.0", "/r/e.plan", "images:0", "/r/in.bin", "/r/out.json", None, dla_core=1)
    assert "--loadInputs='images:0':/r/in.bin" in static11 and not any(a.startswith("--shapes") for a in static11)
    assert "--includeDataTransfers" in static11 and "--useDLACore=1" in static11  # TRT 11: transfers off by default
