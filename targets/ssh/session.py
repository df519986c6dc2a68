"""Sessions on a device: the remote command wrapper, retries, atomic fetches, the local twin."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from core.errors import ConfigError, StageError
from core.io import file_mode
from targets.ssh.address import Address, SshSettings

log = logging.getLogger("pipeline.ssh")


_MARK = "@@edge-pipeline-rc"


_KILL_GRACE_S = 5


_LOCAL_SLACK_S = 30.0


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")


# ssh/scp stderr that means "do not retry, the user must fix something"
_HOSTKEY = ("host key verification failed", "remote host identification has changed",
            "no matching host key", "host key for", "host key is known", "requested strict checking")


_AUTH = ("permission denied", "too many authentication failures", "no more authentication methods")


_RESOLVE = ("could not resolve hostname", "name or service not known")


_SCP_DROP = ("lost connection", "connection closed", "connection reset", "broken pipe")


@dataclass(frozen=True)
class RemoteResult:
    """What one remote command did."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def quote_argv(argv: Sequence[str]) -> str:
    """One shell word per argument."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def command_script(argv: Sequence[str], *, workdir: str, timeout_s: float, token: str,
                   path_prepend: Sequence[str] = (), sidecar: Sequence[str] | None = None,
                   sidecar_log: str = "sidecar.log") -> str:
    """The POSIX ``sh`` script that runs ``argv`` on the device.

    It kills leftovers of earlier attempts in ``workdir`` (their process groups are in
    ``.job.*.pid``), runs ``argv`` (and ``sidecar`` beside it) under ``timeout`` so that the
    whole process group dies at the deadline, and prints the exit status on stderr after a
    marker so the caller can tell it from a dropped connection.
    """
    w = shlex.quote(workdir)
    lines = [
        f"cd {w} || {{ printf '\\n{_MARK} 97\\n' >&2; exit 97; }}",
        'for f in .job.*.pid; do [ -f "$f" ] && kill -s KILL -- -"$(cat "$f")" 2>/dev/null; rm -f "$f"; done',
    ]
    if path_prepend:
        lines.append(f'PATH={shlex.quote(":".join(path_prepend))}:"$PATH"; export PATH')
    t = max(1, round(timeout_s))
    if sidecar:
        lines += [f"timeout -k {_KILL_GRACE_S} {t + 60} {quote_argv(sidecar)} >{shlex.quote(sidecar_log)} 2>&1 &",
                  "sp=$!", f"echo $sp > .job.{token}-side.pid"]
    lines += [
        f"timeout -k {_KILL_GRACE_S} {t} {quote_argv(argv)} &",
        "jp=$!", f"echo $jp > .job.{token}.pid",
        "wait $jp; rc=$?",
        f"rm -f .job.{token}.pid",
    ]
    if sidecar:
        lines += ["kill -s TERM -- -$sp 2>/dev/null; kill -s TERM $sp 2>/dev/null; wait $sp 2>/dev/null",
                  f"rm -f .job.{token}-side.pid"]
    lines += [f"printf '\\n{_MARK} %d\\n' \"$rc\" >&2", "exit $rc"]
    return "\n".join(lines)


def _split_marker(stderr: str) -> tuple[str, int | None]:
    """(stderr without the marker line, the wrapper's exit status or None when absent)."""
    rc = None
    kept = []
    for line in stderr.splitlines():
        if line.startswith(_MARK):
            try:
                rc = int(line.split()[1])
            except (IndexError, ValueError):
                pass
        else:
            kept.append(line)
    return "\n".join(kept).strip("\n"), rc


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def classify_failure(stderr: str) -> str:
    """``"hostkey"``, ``"auth"``, ``"resolve"`` (never retried) or ``"connection"`` (retried)."""
    low = stderr.lower()
    if any(k in low for k in _HOSTKEY):
        return "hostkey"
    if any(k in low for k in _AUTH):
        return "auth"
    if any(k in low for k in _RESOLVE):
        return "resolve"
    return "connection"


class _Session:
    """Shared logic: the script wrapper, timeouts and result checks. Subclasses execute and copy."""

    where = "device"

    def __init__(self, command_timeout_s: float, path_prepend: Sequence[str]) -> None:
        self._timeout = float(command_timeout_s)
        self._path_prepend = tuple(path_prepend)
        self._dir: str | None = None

    # subclass hooks ---------------------------------------------------------
    def _exec(self, script: str, local_timeout_s: float, what: str) -> tuple[int, str, str, int]:
        raise NotImplementedError

    def _make_dir(self) -> str:
        raise NotImplementedError

    def _remove_dir(self, path: str) -> None:
        raise NotImplementedError

    # context manager --------------------------------------------------------
    def __enter__(self):
        self._dir = self._make_dir()
        log.info("%s: working folder %s", self.where, self._dir)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        path, self._dir = self._dir, None
        if path is None:
            return
        try:
            self._remove_dir(path)
        except Exception as err:  # noqa: BLE001 - a leftover temp folder must not fail a good run
            log.warning("%s: could not remove the working folder %s (remove it by hand): %s", self.where, path, err)

    @property
    def remote_dir(self) -> str:
        if self._dir is None:
            raise RuntimeError("use the session as a context manager: `with session as s:`")
        return self._dir

    def path(self, name: str) -> str:
        """Path of ``name`` inside the session folder."""
        return f"{self.remote_dir}/{check_name(name)}"

    def run(self, argv: Sequence[str], timeout_s: float | None = None, *, check: bool = True,
            sidecar: Sequence[str] | None = None, sidecar_log: str = "sidecar.log") -> RemoteResult:
        """Run ``argv`` in the session folder; ``sidecar`` runs beside it and is stopped after it.

        Raises StageError when the command times out, or (with ``check``) exits non-zero.
        """
        if not argv:
            raise ValueError("empty argv")
        t = float(timeout_s or self._timeout)
        token = uuid.uuid4().hex[:12]
        script = command_script(argv, workdir=self.remote_dir, timeout_s=t, token=token,
                                path_prepend=self._path_prepend, sidecar=sidecar,
                                sidecar_log=check_name(sidecar_log))
        t0 = time.perf_counter()
        rc, out, err, attempts = self._exec(script, t + _LOCAL_SLACK_S, quote_argv(argv))
        secs = time.perf_counter() - t0
        err, _ = _split_marker(err)
        res = RemoteResult(tuple(str(a) for a in argv), rc, out, err, secs, attempts)
        log.info("%s: %s -> exit %d in %.1fs (%d attempt%s)", self.where, quote_argv(argv)[:300], rc, secs,
                 attempts, "" if attempts == 1 else "s")
        if rc in (124, 137):
            raise StageError(f"command on {self.where} timed out after {t:.0f}s and was killed: {argv[0]}",
                             hint="raise target option remote_timeout_s, or check the device is not stuck")
        if rc == 127:
            raise StageError(f"command not found on {self.where}: {argv[0]} ({_last_line(err)})",
                             hint="install it on the device or put its folder on the remote PATH (remote_path)")
        if check and rc != 0:
            raise StageError(f"{argv[0]} failed on {self.where} (exit {rc}): {_last_line(err or out)}",
                             hint="see logs/pipeline.log for the full output")
        return res

    def run_shell(self, script: str, timeout_s: float | None = None, *, check: bool = True) -> RemoteResult:
        """Run a fixed ``sh`` script (the script is one quoted argument of ``sh -c``)."""
        return self.run(["sh", "-c", script], timeout_s, check=check)


def check_name(name: str) -> str:
    """File names inside the session folder: a plain, safe basename (no quoting surprises)."""
    if not _SAFE_NAME.match(name or ""):
        raise ValueError(f"unsafe remote file name {name!r}: use letters, digits and ._+-")
    return name


class SshSession(_Session):
    """A working folder on a device reached over SSH; use as a context manager."""

    def __init__(self, address: Address, settings: SshSettings | None = None) -> None:
        settings = settings or SshSettings()
        super().__init__(settings.command_timeout_s, settings.path_prepend)
        self.address = address
        self.settings = settings
        self.where = str(address)
        self._control: str | None = None
        if shutil.which(settings.ssh_bin) is None or shutil.which(settings.scp_bin) is None:
            raise ConfigError("the OpenSSH client (ssh, scp) is not installed on this machine",
                              hint="apt-get install openssh-client")

    # -- connection sharing (one TCP connection and one key exchange per session)
    def __enter__(self):
        if self.settings.multiplex:
            self._control = tempfile.mkdtemp(prefix="ep-ssh-")  # short: unix socket paths are limited
        try:
            return super().__enter__()
        except BaseException:
            self._stop_master()
            raise

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        try:
            super().__exit__(et, e, tb)
        finally:
            self._stop_master()

    def _stop_master(self) -> None:
        if self._control is None:
            return
        control, self._control = self._control, None
        sock = os.path.join(control, "cm")
        if os.path.exists(sock):
            port = ["-p", str(self.address.port)] if self.address.port else []
            subprocess.run([self.settings.ssh_bin, *self.settings.client_options(), "-o", f"ControlPath={sock}",
                            *port, "-O", "exit", "--", self.address.ssh_destination],
                           capture_output=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
        shutil.rmtree(control, ignore_errors=True)

    def _options(self) -> list[str]:
        opts = self.settings.client_options()
        if self._control is not None:
            opts += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self._control}/cm", "-o", "ControlPersist=60"]
        return opts

    # -- argv of the local client processes
    def ssh_argv(self, remote_command: str) -> list[str]:
        port = ["-p", str(self.address.port)] if self.address.port else []
        return [self.settings.ssh_bin, *self._options(), *port, "--", self.address.ssh_destination, remote_command]

    def scp_argv(self, src: str, dst: str) -> list[str]:
        port = ["-P", str(self.address.port)] if self.address.port else []
        return [self.settings.scp_bin, "-q", "-B", *self._options(), *port, "--", src, dst]

    def _attempt(self, argv: list[str], local_timeout_s: float, what: str,
                 scp: bool = False) -> tuple[int, str, str, int]:
        """Run a local ssh/scp process, retrying dropped connections with exponential backoff.

        ssh exits 255 on a connection failure; a remote command's own 255 comes with the
        wrapper's marker and is returned as is. scp exits 1 when the link drops mid-copy.
        """
        last = ""
        n = self.settings.retries + 1
        for attempt in range(1, n + 1):
            try:
                p = subprocess.run(argv, capture_output=True, timeout=local_timeout_s, check=False,
                                   stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise StageError(f"no answer from {self.where} within {local_timeout_s:.0f}s for: {what[:120]}",
                                 hint="the link or the device is stuck; check it, or raise remote_timeout_s") from None
            out = p.stdout.decode("utf-8", "replace")
            err = p.stderr.decode("utf-8", "replace")
            _, marker_rc = _split_marker(err)
            dropped = p.returncode == 255 and marker_rc is None
            if scp and p.returncode == 1 and any(k in err.lower() for k in _SCP_DROP):
                dropped = True
            if not dropped:
                return p.returncode, out, err, attempt
            kind = classify_failure(err)
            last = _last_line(err)
            if kind == "hostkey":
                kh = self.settings.known_hosts or "~/.ssh/known_hosts"
                port = f"-p {self.address.port} " if self.address.port else ""
                raise ConfigError(f"host key of {self.where} is unknown or does not match {kh}: {last}",
                                  hint=f"verify the device's fingerprint, then add it: ssh-keyscan {port}"
                                       f"{self.address.host} >> {kh}")
            if kind == "auth":
                raise ConfigError(f"{self.where} refused the SSH login: {last}",
                                  hint="set target option identity_file to a key listed in the device's "
                                       "~/.ssh/authorized_keys (BatchMode: no passwords)")
            if kind == "resolve":
                raise ConfigError(f"cannot resolve the device host {self.address.host!r}: {last}",
                                  hint="check --device")
            if attempt < n:
                delay = self.settings.backoff_s * 2 ** (attempt - 1)
                log.warning("%s: connection failed (%s); retry %d/%d in %.1fs", self.where, last, attempt,
                            n - 1, delay)
                time.sleep(delay)
        raise StageError(f"lost the SSH connection to {self.where} after {n} attempt{'s' if n > 1 else ''}: {last}",
                         hint=f"check the device is up: ssh {self.address.ssh_destination} true; "
                              "raise target option ssh_retries for a flaky link")

    def _exec(self, script: str, local_timeout_s: float, what: str) -> tuple[int, str, str, int]:
        return self._attempt(self.ssh_argv(quote_argv(["sh", "-c", script])), local_timeout_s, what)

    def _make_dir(self) -> str:
        script = ('d=$(mktemp -d "${TMPDIR:-/tmp}/edge-pipeline.XXXXXXXX") || exit 1; printf "%s\\n" "$d"; '
                  f"printf '\\n{_MARK} 0\\n' >&2")
        rc, out, err, _ = self._attempt(self.ssh_argv(quote_argv(["sh", "-c", script])),
                                        self.settings.connect_timeout_s + _LOCAL_SLACK_S, "mktemp -d")
        path = out.strip().splitlines()[-1] if out.strip() else ""
        if rc != 0 or not path.startswith("/") or "edge-pipeline." not in path:
            raise StageError(f"cannot create a working folder on {self.where}: {_last_line(_split_marker(err)[0])}",
                             hint="the device needs a writable /tmp (or $TMPDIR) and mktemp")
        return path

    def _remove_dir(self, path: str) -> None:
        if "edge-pipeline." not in path:  # never remove anything we did not make
            raise RuntimeError(f"refusing to remove {path}")
        q = shlex.quote(path)
        script = (f'cd {q} 2>/dev/null && for f in .job.*.pid; do [ -f "$f" ] && '
                  f'kill -s KILL -- -"$(cat "$f")" 2>/dev/null; done; cd /; rm -rf -- {q}; '
                  f"printf '\\n{_MARK} 0\\n' >&2")
        rc, _, err, _ = self._attempt(self.ssh_argv(quote_argv(["sh", "-c", script])),
                                      self.settings.connect_timeout_s + _LOCAL_SLACK_S, "rm -rf")
        if rc != 0:
            raise StageError(f"cleanup of {path} on {self.where} failed: {_last_line(err)}")
        log.info("%s: removed %s", self.where, path)

    # -- files
    def put(self, local: Path, name: str | None = None) -> str:
        """Copy a local file into the session folder; returns its remote path."""
        local = Path(local)
        if not local.is_file():
            raise StageError(f"cannot copy {local} to {self.where}: no such file", hint="check the path")
        dst = self.path(name or local.name)
        rc, _, err, _ = self._attempt(self.scp_argv(str(local), self.address.scp_remote(dst)),
                                      self._timeout + _LOCAL_SLACK_S, f"scp {local.name}", scp=True)
        if rc != 0:
            raise StageError(f"copy of {local.name} to {self.where} failed: {_last_line(err)}",
                             hint="check free space on the device")
        return dst

    def remote_size(self, name: str) -> int | None:
        r = self.run(["wc", "-c", self.path(name)], 60, check=False)
        return int(r.stdout.split()[0]) if r.ok and r.stdout.split() else None

    def get(self, name: str, local: Path) -> Path:
        """Fetch ``name`` from the session folder to ``local`` (temp name, size check, rename)."""
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        size = self.remote_size(name)
        if size is None:
            raise StageError(f"{name} was not produced on {self.where}", hint="see logs/pipeline.log")

        def copy(tmp: str) -> None:
            rc, _, err, _ = self._attempt(self.scp_argv(self.address.scp_remote(self.path(name)), tmp),
                                          self._timeout + _LOCAL_SLACK_S, f"scp {name}", scp=True)
            if rc != 0:
                raise StageError(f"fetching {name} from {self.where} failed: {_last_line(err)}")
            got = os.path.getsize(tmp)
            if got != size:
                raise StageError(f"fetched {name} is incomplete ({got} of {size} bytes)",
                                 hint="the connection dropped during the copy; run again")

        return _fetch_atomically(local, copy)

    def exists(self, name: str) -> bool:
        return self.run(["test", "-f", self.path(name)], 60, check=False).ok


def _fetch_atomically(local: Path, copy: Callable[[str], object]) -> Path:
    """Let ``copy`` fill a temp file beside ``local``, then rename it into place: never a half file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".part", dir=local.parent)
    os.close(fd)
    try:
        copy(tmp)
        with contextlib.suppress(OSError):  # a file system without modes
            os.chmod(tmp, file_mode())
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return local


class LocalSession(_Session):
    """The same interface on this machine (the Jetson itself): a temp folder and ``sh``."""

    where = "this machine"

    def __init__(self, command_timeout_s: float = 600.0, path_prepend: Sequence[str] = ()) -> None:
        super().__init__(command_timeout_s, path_prepend)

    def _exec(self, script: str, local_timeout_s: float, what: str) -> tuple[int, str, str, int]:
        try:
            p = subprocess.run(["sh", "-c", script], capture_output=True, timeout=local_timeout_s, check=False,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise StageError(f"{what[:120]} did not finish within {local_timeout_s:.0f}s",
                             hint="raise target option remote_timeout_s") from None
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"), 1

    def _make_dir(self) -> str:
        return tempfile.mkdtemp(prefix="edge-pipeline.")

    def _remove_dir(self, path: str) -> None:
        self._exec(f'cd {shlex.quote(path)} && for f in .job.*.pid; do [ -f "$f" ] && '
                   f'kill -s KILL -- -"$(cat "$f")" 2>/dev/null; done; true', 30, "cleanup")
        shutil.rmtree(path, ignore_errors=True)

    def put(self, local: Path, name: str | None = None) -> str:
        dst = self.path(name or Path(local).name)
        shutil.copyfile(local, dst)
        return dst

    def get(self, name: str, local: Path) -> Path:
        src = self.path(name)
        if not os.path.isfile(src):
            raise StageError(f"{name} was not produced on {self.where}", hint="see logs/pipeline.log")
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        return _fetch_atomically(local, lambda tmp: shutil.copyfile(src, tmp))

    def exists(self, name: str) -> bool:
        return os.path.isfile(self.path(name))


@dataclass(frozen=True)
class Device:
    """Where a remote-capable target runs: an SSH address, or ``None`` for this machine."""

    address: Address | None
    settings: SshSettings = field(default_factory=SshSettings)

    def session(self) -> _Session:
        if self.address is None:
            return LocalSession(self.settings.command_timeout_s, self.settings.path_prepend)
        return SshSession(self.address, self.settings)

    @property
    def name(self) -> str:
        return str(self.address) if self.address else "this machine"
