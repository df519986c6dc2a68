"""Fixtures for the remote targets: a real OpenSSH server on a loopback port.

``sshd`` is Debian's ``openssh-server`` (``/usr/sbin/sshd``), started in the foreground with a
throwaway host key and user key made by ``ssh-keygen`` in a temp folder. Tests that need it
skip, with the reason, where it is not installed. Because the "device" is this machine, a test
may look at the remote folder through the local file system to check what the transport did.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
_MISSING = "OpenSSH server not installed (/usr/sbin/sshd): apt-get install -y openssh-server"


@dataclass(frozen=True)
class SshKeys:
    dir: Path
    host_key: Path
    user_key: Path
    known_hosts: Path

    def wrong_known_hosts(self) -> Path:
        """A known_hosts that pins another key for the same host: must fail closed."""
        p = self.dir / "known_hosts.wrong"
        if not p.exists():
            other = self.dir / "other_host_key"
            _keygen(other)
            port_agnostic = (other.with_suffix(".pub")).read_text().split()[:2]
            p.write_text("".join(f"{line.split()[0]} {' '.join(port_agnostic)}\n"
                                 for line in self.known_hosts.read_text().splitlines()))
        return p


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edge-pipeline-test", "-f", str(path)],
                   check=True, capture_output=True)


@dataclass
class Sshd:
    """A running ``sshd -D`` on 127.0.0.1:port, serving the current user with the test key."""

    keys: SshKeys
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def address(self) -> str:
        return f"{getpass.getuser()}@127.0.0.1:{self.port}"

    def options(self, **extra) -> dict:
        """Target options that reach this server (and nothing from ~/.ssh)."""
        return {"device": self.address, "known_hosts": str(self.keys.known_hosts),
                "identity_file": str(self.keys.user_key), "ssh_config": "none", **extra}

    def settings(self, **extra):
        from targets.ssh import SshSettings

        kw = {"known_hosts": self.keys.known_hosts, "identity_file": self.keys.user_key, "config_file": "none",
              "connect_timeout_s": 5, "backoff_s": 0.2, **extra}
        return SshSettings(**kw)

    def session_pids(self) -> list[int]:
        """The sshd processes serving connections (children of the listener)."""
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid:
                out.append(int(d.name))
        return out

    def drop_connections(self) -> int:
        """SIGKILL every sshd child serving a session: the clients see the link drop."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_sshd(keys: SshKeys, workdir: Path) -> Sshd:
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege-separation dir
    for _ in range(3):
        port = _free_port()
        cfg = workdir / "sshd_config"
        cfg.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {keys.host_key}",
            f"AuthorizedKeysFile {keys.user_key}.pub", f"PidFile {workdir / 'sshd.pid'}",
            "StrictModes no", "UsePAM no", "PermitRootLogin prohibit-password", "PubkeyAuthentication yes",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UseDNS no", "PrintMotd no",
            "Subsystem sftp internal-sftp", "MaxStartups 50", "LogLevel ERROR", "",
        ]))
        log = workdir / "sshd.log"
        with open(log, "wb") as err:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                    if c.recv(64).startswith(b"SSH-"):
                        return Sshd(keys, port, proc, log)
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
    pytest.skip(f"sshd did not start: {log.read_text(errors='replace').strip()[-300:]}")


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory) -> SshKeys:
    if not Path(SSHD).exists():
        pytest.skip(_MISSING)
    if shutil.which("ssh") is None or shutil.which("scp") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH client not installed: apt-get install -y openssh-client")
    d = tmp_path_factory.mktemp("sshkeys")
    host, user = d / "host_ed25519", d / "user_ed25519"
    _keygen(host)
    _keygen(user)
    return SshKeys(d, host, user, d / "known_hosts")  # known_hosts: written per server (_serve)


def _serve(keys: SshKeys, workdir: Path) -> Sshd:
    """Start sshd and give it a known_hosts of its own that pins its host key on its port."""
    s = _start_sshd(keys, workdir)
    kh = workdir / "known_hosts"
    kt, kb = keys.host_key.with_suffix(".pub").read_text().split()[:2]
    kh.write_text(f"[127.0.0.1]:{s.port} {kt} {kb}\n")
    s.keys = SshKeys(workdir, keys.host_key, keys.user_key, kh)
    return s


@pytest.fixture(scope="module")
def sshd(ssh_keys, tmp_path_factory):
    """One sshd for a test module (do not kill it; use ``fresh_sshd`` for that)."""
    s = _serve(ssh_keys, tmp_path_factory.mktemp("sshd"))
    yield s
    s.stop()


@pytest.fixture
def fresh_sshd(ssh_keys, tmp_path_factory):
    """An sshd of its own, for tests that drop connections or stop the server."""
    s = _serve(ssh_keys, tmp_path_factory.mktemp("sshd1"))
    yield s
    s.stop()
