"""Optuna storages, samplers and the two process-safety pieces: the trial heartbeat and the ask lock."""

from __future__ import annotations

import contextlib
import threading
import warnings

from core.errors import ConfigError, did_you_mean

SAMPLERS = ("nsga2", "tpe")
DEFAULT_HEARTBEAT_S = 30


def require_optuna():
    """Import optuna, or raise a ConfigError that says how to get it."""
    try:
        import optuna
    except ModuleNotFoundError:
        raise ConfigError("search 'optuna' needs the optuna package", hint="pip install 'optuna>=5,<6'") from None
    return optuna


def open_storage(url: str | None, *, heartbeat_s: int | None = None):
    """An Optuna storage for ``url`` (``None``: in memory, one process).

    Server storages (PostgreSQL, MySQL) get a heartbeat (``heartbeat_s``, default 30 s, grace 4x)
    and a retry callback, so the trial of a worker killed outright is failed and queued again.
    SQLite gets none unless asked: one machine, and its writers already serialise.
    """
    optuna = require_optuna()
    if url is None:
        return optuna.storages.InMemoryStorage()
    url = _with_driver(url)
    sqlite = url.startswith("sqlite")
    hb = heartbeat_s if heartbeat_s is not None else (None if sqlite else DEFAULT_HEARTBEAT_S)
    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=hb, grace_period=4 * hb if hb else None,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
                if hb else None)
    except ImportError as e:  # optuna re-raises the driver's ModuleNotFoundError as a plain ImportError
        raise ConfigError(f"storage {redact_url(url)} needs a database driver that is not installed ({e})",
                          hint="pip install '.[postgres]' (psycopg2-binary) for postgresql:// URLs") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy's errors: bad URL, server down, wrong password
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot open Optuna storage {redact_url(url)}: {first[:300]}",
                          hint="check the URL (sqlite:///path/study.db or postgresql://user@host:port/db) and "
                               "that the server is reachable") from None


def _with_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 defaults to psycopg 3, we ship psycopg2."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def redact_url(url: str) -> str:
    """The URL without its password."""
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        cred, _, rest = tail.rpartition("@")
        user = cred.split(":", 1)[0]
        return f"{head}://{user}{':***' if ':' in cred else ''}@{rest}"
    return url


def make_sampler(name: str, seed: int | None, max_trials: int):
    """NSGA-II or TPE sized for ``max_trials`` (a small population so a 16-trial budget still evolves)."""
    optuna = require_optuna()
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=min(50, max(4, max_trials // 4)), seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(4, max_trials // 4)))
    raise ConfigError(f"unknown optuna sampler '{name}'.{did_you_mean(name, SAMPLERS)}",
                      hint=f"use one of: {', '.join(SAMPLERS)}")


class Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds while it is evaluated."""

    def __init__(self, storage, trial_id: int, interval: int | None) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the grace period covers a few
                pass
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


def heartbeat_interval(study) -> int | None:
    storage = getattr(study._storage, "_backend", study._storage)  # _CachedStorage wraps the RDB storage
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get else None


@contextlib.contextmanager
def ask_lock(study):
    """Serialise ``study.ask()`` between processes on one SQLite file.

    Optuna pops a queued (WAITING) trial by reading its state and then setting it RUNNING; on
    PostgreSQL the read takes a row lock (``FOR UPDATE``), but SQLite ignores it, so two processes
    could both pop the same queued trial and evaluate it twice. A file lock next to the database
    closes that window (SQLite is one machine by definition). New trial numbers are safe either way.
    """
    storage = getattr(study._storage, "_backend", study._storage)
    url = str(getattr(storage, "url", ""))
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    try:
        import fcntl
    except ImportError:  # not POSIX: no other process can share the file safely anyway
        fcntl = None
    if not path or ":memory:" in path or fcntl is None:
        yield
        return
    with open(f"{path}.ask.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


