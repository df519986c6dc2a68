from __future__ import annotations

import pytest

from core.errors import SpecError
from core.registry import Registry


def test_register_get_list_and_duplicates():
    r: Registry[int] = Registry("thing")
    r.register("alpha-1")(1)
    r.add("alpha-2", 2)
    r.add("beta", 3)
    assert r.get("beta") == 3
    assert r.names("alpha*") == ["alpha-1", "alpha-2"]
    with pytest.raises(ValueError, match="duplicate thing 'beta'"):
        r.add("beta", 4)


def test_unknown_name_suggests_closest():
    r: Registry[int] = Registry("target")
    r.add("jetson", 1)
    r.add("cpu", 2)
    with pytest.raises(SpecError) as e:
        r.get("jetsn")
    assert "Did you mean 'jetson'" in e.value.message
    assert "cpu" in e.value.hint
