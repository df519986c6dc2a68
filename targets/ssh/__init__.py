"""Run commands and copy files on another machine through the OpenSSH client (``ssh``, ``scp``).

The transport knows nothing about what it runs: the remote ``cpu`` target runs
``ort_worker.py`` through it, the ``jetson`` target runs ``trtexec`` and ``tegrastats``.

    with SshSession(Address.parse("nvidia@orin:22"), SshSettings(known_hosts=Path("kh"))) as s:
        s.put(Path("model.onnx"))
        r = s.run(["trtexec", "--onnx=" + s.path("model.onnx")], timeout_s=600)
        s.get("times.json", Path("runs/x/times.json"))
    # the remote folder is gone here, and no remote process of this session is left running

What it guarantees:

- Host keys are checked (``StrictHostKeyChecking=yes``; a mismatch fails at once, never retried),
  no prompt can block (``BatchMode=yes``), dead links are noticed (``ConnectTimeout``,
  ``ServerAliveInterval`` / ``ServerAliveCountMax``).
- Every remote argument goes through :func:`shlex.quote`; a command is an argv list, never a string.
- A command runs in a per-session folder made by ``mktemp -d`` and removed on exit.
- A remote command is bounded by ``timeout`` on the remote side (its whole process group is
  killed) and by a local deadline on the ``ssh`` client.
- A dropped connection (ssh exit 255 with no exit status from the remote wrapper) is retried with
  exponential backoff; before the command runs again, what is left of the previous attempt is
  killed. A remote command's own non-zero exit is never retried.
- Fetched files are written to a temporary name, checked against the remote size, then renamed.
- The commands of one session share one connection (``ControlMaster``), stopped on exit.

:class:`LocalSession` offers the same interface on this machine (used on the Jetson itself).

Modules: :mod:`~targets.ssh.address` (``user@host[:port]``, the transport's options),
:mod:`~targets.ssh.session` (sessions, the remote command wrapper, the device).
"""

from targets.ssh.address import SSH_OPTIONS, Address, SshSettings
from targets.ssh.session import (
    Device,
    LocalSession,
    RemoteResult,
    SshSession,
    check_name,
    classify_failure,
    command_script,
    quote_argv,
)

__all__ = ["SSH_OPTIONS", "Address", "Device", "LocalSession", "RemoteResult", "SshSession", "SshSettings",
           "check_name", "classify_failure", "command_script", "quote_argv"]
