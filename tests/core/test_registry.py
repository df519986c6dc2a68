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


def test_aliases_resolve_but_are_not_listed_and_cannot_be_duplicated():
    r: Registry[int] = Registry("criterion")
    r.add("magnitude-l2", 2, aliases=("magnitude",))
    assert r.get("magnitude") == 2 and "magnitude" in r and r.names() == ["magnitude-l2"]
    with pytest.raises(ValueError, match="duplicate criterion 'magnitude'"):
        r.add("magnitude", 3)
