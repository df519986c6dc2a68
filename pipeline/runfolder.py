"""A run folder has one owner: an exclusive lock for the run's lifetime, and no adopting of strangers' folders.

:class:`RunFolder` (a context manager) is taken before anything is written:

- **The lock**: ``RUN/.pipeline.lock``, held with ``flock(LOCK_EX | LOCK_NB)`` until the run ends.
  A second run on the same folder is refused at once, and the message names the holder (PID,
  host, start time, written into the lock file). The kernel releases a ``flock`` when its process
  dies, however it dies (kill -9 included), so a stale lock cannot block the next run; the file
  itself stays (removing it would race with a run that is just opening it).
- **Ownership**: a folder that already holds a run (``manifest.json``) is refused without
  ``--resume``; a non-empty folder that holds no run of this tool is refused unless the user
  passes ``--overwrite`` (Hugging Face's ``--overwrite_output_dir`` convention): then the run
  writes its files into it, replacing those with the same names and leaving the others alone.
  ``--overwrite`` over a run starts over: its artifacts (report, manifest, models, engines, the
  run folder's Optuna study) are removed first; a study in another storage (``tune.storage``) is not.
- **Leftovers**: temporary files of an earlier run that was killed (``.NAME.*`` next to an
  artifact ``NAME``, written by :mod:`core.io`'s atomic writes) are removed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from core.errors import ConfigError

log = logging.getLogger("pipeline")

LOCK = ".pipeline.lock"
MANIFEST = "manifest.json"
# what a run writes at the top of its folder (a stale temporary file of one of these is ours to remove)
ARTIFACTS = ("manifest.json", "baseline.onnx", "baseline.json", "scores.pt", "policy.json", "candidates.json",
             "pruned_raw.pt", "pruned.pt", "masks.pt", "model.onnx", "parity.json", "engine.json", "final.json",
             "report.json", "report.md", "pareto.png", "keep_ratios.png", "lut_calibration.png", "study.db")


class RunFolder:
    """Own ``run_dir`` for a run: see the module docstring.

    Args:
        run_dir: The run folder (created if missing).
        resume: Continue the run the folder holds.
        overwrite: Write into a folder that is not empty, or start a new run over an old one.
    """

    def __init__(self, run_dir: Path, *, resume: bool = False, overwrite: bool = False) -> None:
        self.run_dir, self.resume, self.overwrite = Path(run_dir), resume, overwrite
        self._lock = None

    def __enter__(self) -> RunFolder:
        d = self.run_dir
        if d.exists() or self.resume:
            self._check_owner(dry=True)  # a refused folder gets nothing written into it, not even the lock file
        try:
            d.mkdir(parents=True, exist_ok=True)
            self._lock = open(d / LOCK, "a+")  # noqa: SIM115 - held for the run's lifetime
        except OSError as e:
            raise ConfigError(f"output folder {d} is not writable: {e.strerror or e}",
                              hint="choose another folder with --out") from None
        try:
            self._acquire()
            self._check_owner()  # again, now that no other run can change the folder
            self._remove_leftovers()
            (d / "logs").mkdir(exist_ok=True)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._release()

    # -- the lock
    def _acquire(self) -> None:
        import fcntl

        f = self._lock
        assert f is not None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ConfigError(f"{self.run_dir} is in use by another run ({holder})",
                              hint="wait until it ends, or choose another folder with --out") from None
        except OSError as e:  # a file system without flock (NFS without lockd, some FUSE / CIFS mounts)
            log.warning("cannot lock %s (%s): running without the run folder lock", self.run_dir, e.strerror or e)
        f.seek(0)
        f.truncate()
        f.write(f"PID {os.getpid()} on {socket.gethostname()}, since "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        f.flush()

    def _release(self) -> None:
        if self._lock is not None:
            try:
                import fcntl

                fcntl.flock(self._lock, fcntl.LOCK_UN)
            finally:
                self._lock.close()
                self._lock = None

    # -- ownership
    def _check_owner(self, dry: bool = False) -> None:
        """Refuse a folder this run may not use; with ``dry``, only look (nothing is removed)."""
        d = self.run_dir
        has_run = (d / MANIFEST).exists()
        if self.resume:
            if not has_run:
                raise ConfigError(f"nothing to resume in {d}: no manifest.json", hint="start a new run without --resume")
            return
        if has_run and not self.overwrite:
            raise ConfigError(f"{d} already holds a run",
                              hint="add --resume to continue it, --overwrite to start over in it, or choose a new "
                                   "folder with --out")
        if has_run and not dry:  # --overwrite over a run: start over, with none of the old run's artifacts
            # (a stale report.json would read as the new run's verdict; its Optuna study would be resumed)
            for p in (*(d / n for n in ARTIFACTS), *d.glob("study.db*"), *d.glob("*.plan"), *d.glob("*.plan.json")):
                p.unlink(missing_ok=True)
        others = sorted(p.name for p in d.iterdir() if p.name not in (LOCK, "logs"))  # ours, even before a manifest
        if others and not has_run and not self.overwrite:
            shown = ", ".join(others[:3]) + (f" (+{len(others) - 3} more)" if len(others) > 3 else "")
            raise ConfigError(f"{d} is not empty ({shown}) and holds no run of this tool",
                              hint="choose an empty or new folder with --out, or pass --overwrite to write into it")

    def _remove_leftovers(self) -> None:
        """Temporary files of atomic writes a killed run left behind (``.NAME.xxxx`` beside artifact NAME)."""
        for name in ARTIFACTS:
            for p in self.run_dir.glob(f".{name}.*"):
                p.unlink(missing_ok=True)
