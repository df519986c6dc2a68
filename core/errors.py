"""Typed errors. Every user-facing failure is one line plus a hint; the CLI maps them to exit 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PipelineError(Exception):
    """A failure the user can act on: bad input, bad config, or a stage that failed a check.

    Args:
        message: One line saying what is wrong.
        hint: One line saying what to do next.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(PipelineError):
    """The configuration (YAML or flags) is invalid."""


class SpecError(PipelineError):
    """A model, data or target spec could not be resolved."""


class ModelLoadError(PipelineError):
    """A checkpoint could not be read or does not fit the architecture."""


class StageError(PipelineError):
    """A stage ran and failed one of its own checks."""


class ParityError(StageError):
    """A converted model's outputs differ from their reference (names, shapes or values)."""


class ShapeMismatch(ParityError):
    """A converted model gives other outputs (count, names or shapes) than its reference."""


class ToleranceExceeded(ParityError):
    """A converted model's output values differ from the reference beyond the tolerance."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a CI runner cancelling the job): handled like Ctrl-C, with its own exit code."""


class Interrupted(PipelineError):
    """A command stopped by Ctrl-C (exit 130) or SIGTERM (exit 143); its run folder is consistent."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message, hint="rerun with --resume --out RUN_DIR to continue")
        self.exit_code = exit_code


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest choice, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""
