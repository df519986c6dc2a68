"""The SSH transport against a real OpenSSH server on a loopback port (see conftest.py).

The "device" is this machine reached through sshd, so a test can check the remote folder and
remote processes through /proc and the local file system.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from core.errors import ConfigError, StageError
from targets.ssh import Address, LocalSession, SshSession, SshSettings, classify_failure, command_script


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _procs_with(marker: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                pass
    return [p for p in out if p != os.getpid() and _alive(p)]


def _gone(marker: str, within_s: float = 3.0) -> bool:
    """No process whose command line contains ``marker`` (waiting a little for reaping)."""
    deadline = time.monotonic() + within_s
    while _procs_with(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _dead(pid: int, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------- addresses and options (no server)

@pytest.mark.parametrize("text, host, user, port", [
    ("nvidia@orin", "orin", "nvidia", None),
    ("nvidia@192.168.1.20:2222", "192.168.1.20", "nvidia", 2222),
    ("orin.local", "orin.local", None, None),
    ("ssh://ci@jetson-01:22", "jetson-01", "ci", 22),
    ("root@[::1]:2200", "::1", "root", 2200),
    ("[fe80::1%eth0]", "fe80::1%eth0", None, None),
])
def test_address_parse(text, host, user, port):
    a = Address.parse(text)
    assert (a.host, a.user, a.port) == (host, user, port)
    assert Address.parse(str(a)) == a  # round trip


@pytest.mark.parametrize("text, words", [
    ("", "empty"), ("nvidia@orin:0", "port"), ("nvidia@orin:99999", "port"), ("nvidia@orin:ssh", "port"),
    ("@orin", "user"), ("-oProxyCommand=x", "host"), ("nvidia@-oProxyCommand=x", "host"),
    ("nvidia@fe80::1", "brackets"), ("a b@host", "spaces"), ("nvidia@[::1", "unbalanced"), ("x;rm@host", "user"),
])
def test_address_parse_errors(text, words):
    with pytest.raises(ConfigError) as e:
        Address.parse(text)
    assert words in str(e.value)
    assert "e.g." in e.value.hint


def test_client_options_are_strict_and_port_goes_before_destination(tmp_path):
    kh, key = tmp_path / "kh", tmp_path / "key"
    kh.write_text("")
    key.write_text("")
    s = SshSession(Address.parse("ci@orin:2222"), SshSettings(known_hosts=kh, identity_file=key, config_file="none"))
    argv = s.ssh_argv("true")
    joined = " ".join(argv)
    for opt in ("BatchMode=yes", "StrictHostKeyChecking=yes", f"UserKnownHostsFile={kh}", f"IdentityFile={key}",
                "ConnectTimeout=10", "ServerAliveInterval=5", "ServerAliveCountMax=3"):
        assert opt in joined
    assert argv[argv.index("--") + 1:] == ["ci@orin", "true"] and argv[argv.index("-p") + 1] == "2222"
    scp = s.scp_argv("a", "ci@orin:/tmp/b")
    assert scp[scp.index("-P") + 1] == "2222" and scp[-3:] == ["--", "a", "ci@orin:/tmp/b"]


def test_settings_from_options_rejects_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="known_hosts"):
        SshSettings.from_options({"known_hosts": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="ssh_retries"):
        SshSettings.from_options({"ssh_retries": -1})
    s = SshSettings.from_options({"ssh_config": "none", "ssh_retries": 5, "remote_timeout_s": 30})
    assert (s.config_file, s.retries, s.command_timeout_s) == ("none", 5, 30.0)


def test_classify_failure():
    assert classify_failure("Host key verification failed.") == "hostkey"
    assert classify_failure("No ED25519 host key is known for [h]:22 and you have requested strict checking.") \
        == "hostkey"
    assert classify_failure("ci@h: Permission denied (publickey).") == "auth"
    assert classify_failure("ssh: connect to host h port 22: Connection refused") == "connection"
    assert classify_failure("Connection to h closed by remote host.") == "connection"


# ---------------------------------------------------------------- the remote script, run locally

def test_every_argument_arrives_verbatim_locally():
    nasty = ["a b", "$HOME", "`id`", "$(touch /tmp/pwned-edge)", "it's", 'x"y', "semi;colon", "*", ""]
    with LocalSession() as s:
        r = s.run(["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *nasty], 30)
    import json

    assert json.loads(r.stdout) == nasty
    assert not Path("/tmp/pwned-edge").exists()


def test_command_script_kills_leftovers_and_reports_status():
    script = command_script(["echo", "hi"], workdir="/tmp/x y", timeout_s=10, token="abc",
                            path_prepend=["/opt/my bin"], sidecar=["tegrastats", "--interval", "100"])
    assert "cd '/tmp/x y'" in script and "PATH='/opt/my bin':\"$PATH\"" in script
    assert "kill -s KILL -- -" in script and "timeout -k 5 10 echo hi &" in script
    assert "timeout -k 5 70 tegrastats --interval 100" in script and "@@edge-pipeline-rc" in script


def test_local_session_timeout_kills_the_process_group():
    with LocalSession() as s:
        t0 = time.monotonic()
        with pytest.raises(StageError, match="timed out after 1s"):
            s.run(["sh", "-c", "sleep 47.125 & sleep 47.125"], timeout_s=1)
        assert time.monotonic() - t0 < 10
        assert _gone("sleep 47.125")
        d = s.remote_dir
    assert not os.path.exists(d)


# ---------------------------------------------------------------- against the loopback sshd

def test_put_run_get_roundtrip_and_cleanup(sshd, tmp_path):
    payload = os.urandom(300_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(payload)
    with SshSession(Address.parse(sshd.address), sshd.settings()) as s:
        rdir = s.remote_dir
        assert rdir.startswith("/") and os.path.isdir(rdir)  # loopback: the device's disk is ours
        remote = s.put(src)
        assert remote == f"{rdir}/blob.bin"
        r = s.run(["sha256sum", "blob.bin"])
        assert r.stdout.split()[0] == hashlib.sha256(payload).hexdigest() and r.attempts == 1
        s.run(["sh", "-c", "tr 'a-z' 'A-Z' < blob.bin > upper.bin"])
        got = s.get("upper.bin", tmp_path / "out" / "upper.bin")
        assert got.read_bytes() == payload.translate(bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz",
                                                                     b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
        assert [p.name for p in got.parent.iterdir()] == ["upper.bin"]  # no temp file left
    assert not os.path.exists(rdir)


def test_arguments_arrive_verbatim_over_ssh(sshd):
    import json

    nasty = ["a b", "$HOME", "`id`", "$(touch /tmp/pwned-edge-ssh)", "it's", 'x"y', "a;b", "*", "", "\\n"]
    with SshSession(Address.parse(sshd.address), sshd.settings()) as s:
        r = s.run(["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *nasty], 30)
    assert json.loads(r.stdout) == nasty
    assert not Path("/tmp/pwned-edge-ssh").exists()


def test_remote_nonzero_exit_is_not_retried(sshd):
    with SshSession(Address.parse(sshd.address), sshd.settings(retries=3)) as s:
        with pytest.raises(StageError, match=r"exit 3\): boom"):
            s.run(["sh", "-c", "echo boom >&2; exit 3"])
        r = s.run(["sh", "-c", "echo first >> count; exit 255"], check=False)  # the command's own 255
        assert r.returncode == 255 and r.attempts == 1
        assert Path(s.path("count")).read_text() == "first\n"
        with pytest.raises(StageError, match="command not found"):
            s.run(["no-such-tool-edge"])


def test_stuck_remote_command_hits_its_timeout(sshd):
    with SshSession(Address.parse(sshd.address), sshd.settings()) as s:
        t0 = time.monotonic()
        with pytest.raises(StageError, match="timed out after 2s and was killed"):
            s.run(["sh", "-c", "sleep 53.375"], timeout_s=2)
        assert time.monotonic() - t0 < 15
        assert _gone("sleep 53.375")  # the remote process is gone, not just the client


def test_incomplete_fetch_never_lands(sshd, tmp_path, monkeypatch):
    with SshSession(Address.parse(sshd.address), sshd.settings()) as s:
        s.run(["sh", "-c", "head -c 5000 /dev/zero > r.bin"])
        monkeypatch.setattr(s, "remote_size", lambda name: 6000)  # as if the copy were cut short
        with pytest.raises(StageError, match="incomplete"):
            s.get("r.bin", tmp_path / "r.bin")
        assert list(tmp_path.iterdir()) == []
        monkeypatch.undo()
        with pytest.raises(StageError, match="not produced"):
            s.get("missing.bin", tmp_path / "m.bin")
        assert list(tmp_path.iterdir()) == []


def test_dropped_connection_is_retried_and_the_orphan_killed(fresh_sshd):
    """Kill the sshd process serving the session mid-command: the client sees exit 255, the
    transport reconnects, kills what the first attempt left running, and runs the command again."""
    script = ('if [ -f first.pid ]; then sleep 1; echo second; '
              'else echo $$ > first.pid; exec sleep 41.5; fi')
    with SshSession(Address.parse(fresh_sshd.address), fresh_sshd.settings(retries=2)) as s:
        first = Path(s.path("first.pid"))
        killed = []

        def killer():
            deadline = time.monotonic() + 20
            while not first.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            killed.append(fresh_sshd.drop_connections())

        th = threading.Thread(target=killer)
        th.start()
        r = s.run(["sh", "-c", script], timeout_s=60)
        th.join()
        assert killed and killed[0] >= 1
        assert r.stdout.strip() == "second" and r.attempts == 2
        assert _dead(int(first.read_text()))  # the first attempt's orphan was killed
        assert _gone("sleep 41.5")


def test_connection_lost_for_good_gives_a_clear_error(fresh_sshd, caplog):
    """Drop the session and stop the listener: retries with backoff, then one clear error."""
    with SshSession(Address.parse(fresh_sshd.address), fresh_sshd.settings(retries=2)) as s:
        def killer():
            time.sleep(1.0)
            serving = fresh_sshd.session_pids()
            fresh_sshd.stop()
            for pid in serving:
                os.kill(pid, signal.SIGKILL)

        th = threading.Thread(target=killer)
        th.start()
        t0 = time.monotonic()
        with pytest.raises(StageError) as e:
            s.run(["sh", "-c", "sleep 37.25"], timeout_s=60)
        th.join()
        elapsed = time.monotonic() - t0
        rdir = s.remote_dir
    msg = str(e.value)
    assert "lost the SSH connection" in msg and "after 3 attempts" in msg and "Connection refused" in msg
    assert "ssh_retries" in e.value.hint
    assert elapsed >= 1.0 + 0.2 + 0.4  # the drop, then backoff 0.2 s and 0.4 s
    # cleanup could not reach the device either: a warning naming the folder, no second error
    assert any("could not remove the working folder" in r.message and rdir in r.message for r in caplog.records)
    for pid in _procs_with("sleep 37.25"):  # loopback: tidy what the unreachable device left
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(rdir, ignore_errors=True)


def test_host_key_mismatch_fails_closed_without_retry(sshd, tmp_path):
    settings = sshd.settings(retries=5, backoff_s=5)
    from dataclasses import replace

    bad = replace(settings, known_hosts=sshd.keys.wrong_known_hosts())
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        with SshSession(Address.parse(sshd.address), bad):
            pass
    assert time.monotonic() - t0 < 5  # no retry, no backoff
    assert "host key" in str(e.value) and "ssh-keyscan -p" in e.value.hint
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(ConfigError, match="host key"):
        with SshSession(Address.parse(sshd.address), replace(settings, known_hosts=empty)):
            pass


def test_wrong_user_key_is_a_config_error(sshd, tmp_path):
    from dataclasses import replace

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(ConfigError, match="refused the SSH login") as e:
        with SshSession(Address.parse(sshd.address), replace(sshd.settings(), identity_file=other)):
            pass
    assert "identity_file" in e.value.hint
