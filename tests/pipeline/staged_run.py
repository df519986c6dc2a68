"""``pipeline run`` with a pause at the start of every stage, for the crash tests (test code, not the product).

    EDGE_TEST_MARKS=DIR EDGE_TEST_PAUSE_S=1.5 python -m tests.pipeline.staged_run run ...

Before a stage runs, ``DIR/at-STAGE`` is written and the process sleeps ``EDGE_TEST_PAUSE_S``, so a test can
send a signal while that stage is the current one; then the stage runs as usual.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path


def main() -> None:
    import pipeline.steps as steps
    from pipeline.cli import main as cli_main

    marks, pause = Path(os.environ["EDGE_TEST_MARKS"]), float(os.environ.get("EDGE_TEST_PAUSE_S", "1.0"))
    marks.mkdir(parents=True, exist_ok=True)
    original = steps.build_stages

    def paused(name, fn):
        def run(state):
            (marks / f"at-{name}").write_text(str(os.getpid()))
            time.sleep(pause)
            return fn(state)
        return run

    def build_stages():
        return [dataclasses.replace(st, fn=paused(st.name, st.fn)) for st in original()]

    steps.build_stages = build_stages
    cli_main()


if __name__ == "__main__":
    main()
