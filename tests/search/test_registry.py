"""The search registry: every strategy registered, listed, checked up front, and tested."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError, SpecError
from search import SEARCHES

TESTS = Path(__file__).resolve().parents[1]
# the test file that drives each registered search through its real code path
SEARCH_TESTS = {"global": "search/test_global_ratio.py", "greedy": "search/test_greedy.py",
                "optuna": "search/test_optuna.py", "cswap": "search/test_cswap_search.py",
                "sensitivity": "search/test_sensitivity.py", "aap": "search/test_aap_search.py"}


def test_every_registered_search_has_a_test():
    missing = set(SEARCHES.names()) - set(SEARCH_TESTS)
    assert not missing, f"searches without a test: {sorted(missing)}"
    assert all((TESTS / f).is_file() for f in SEARCH_TESTS.values())


def test_searches_declare_objectives_and_a_summary():
    for name, s in SEARCHES.items():
        assert s.summary and s.objectives and s.name == name
    assert SEARCHES.get("greedy").needs_latency and SEARCHES.get("global").uses_allocation


def test_unknown_search_and_unsupported_objective_fail_before_any_work():
    with pytest.raises(SpecError, match="Did you mean 'greedy'"):
        SEARCHES.get("greddy")
    with pytest.raises(ConfigError, match="search 'greedy' needs objective latency") as e:
        SEARCHES.get("greedy").check("memory", has_latency_budget=False)
    assert "--search global or optuna" in e.value.hint
    with pytest.raises(ConfigError, match="with a latency or speedup budget"):
        SEARCHES.get("greedy").check("latency", has_latency_budget=False)
    SEARCHES.get("global").check("memory", has_latency_budget=False)


def test_pipeline_searches_lists_every_search(cli):
    rc, out, _ = cli("searches")
    assert rc == 0 and all(n in out for n in SEARCHES.names())


def test_dry_run_refuses_an_unknown_search(cli):
    rc, _, err = cli("run", "--dry-run", "--search", "optuma")
    assert rc == 2 and "Did you mean 'optuna'" in err
