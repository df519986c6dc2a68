"""Where a device is (``user@host[:port]``) and how the transport reaches it (:class:`SshSettings`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.errors import ConfigError

SSH_OPTIONS = frozenset({"known_hosts", "identity_file", "ssh_config", "connect_timeout_s", "ssh_retries",
                         "remote_timeout_s"})
"""Target options that configure the transport; every remote-capable target accepts them."""


_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")


_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})$")


_V6 = re.compile(r"^[0-9A-Fa-f:.%a-zA-Z]+$")


@dataclass(frozen=True)
class Address:
    """``user@host[:port]``; ``user`` and ``port`` may be omitted (ssh's defaults apply)."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``[ssh://][user@]host[:port]``; IPv6 hosts go in brackets: ``user@[::1]:2222``."""
        hint = "write the device as user@host or user@host:port, e.g. nvidia@192.168.1.20:22"
        raw = (text or "").strip()
        if raw.startswith("ssh://"):
            raw = raw[len("ssh://"):].rstrip("/")
        if not raw or any(c.isspace() for c in raw):
            raise ConfigError(f"device address {text!r} is empty or contains spaces", hint=hint)
        user: str | None = None
        if "@" in raw:
            user, _, raw = raw.rpartition("@")
            if not _USER.match(user):
                raise ConfigError(f"device address {text!r}: {user!r} is not a valid user name", hint=hint)
        port_text: str | None = None
        if raw.startswith("["):
            host, sep, rest = raw[1:].partition("]")
            if not sep or not host or not _V6.match(host):
                raise ConfigError(f"device address {text!r}: unbalanced or empty [IPv6] host", hint=hint)
            if rest:
                if not rest.startswith(":"):
                    raise ConfigError(f"device address {text!r}: unexpected {rest!r} after ']'", hint=hint)
                port_text = rest[1:]
        else:
            host, sep, port_text = raw.partition(":")
            if not sep:
                port_text = None
            if ":" in (port_text or ""):
                raise ConfigError(f"device address {text!r}: an IPv6 host must be written in brackets",
                                  hint="e.g. nvidia@[fe80::1]:22")
            if not host or not _HOST.match(host):
                raise ConfigError(f"device address {text!r}: {host!r} is not a valid host name", hint=hint)
        port: int | None = None
        if port_text is not None:
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise ConfigError(f"device address {text!r}: port {port_text!r} is not a number in 1..65535",
                                  hint=hint)
            port = int(port_text)
        return cls(host=host, user=user, port=port)

    @property
    def _host_part(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def ssh_destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def scp_remote(self, path: str) -> str:
        return f"{self.user + '@' if self.user else ''}{self._host_part}:{path}"

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self._host_part}{':' + str(self.port) if self.port else ''}"


@dataclass(frozen=True)
class SshSettings:
    """How to reach the device. ``None`` means "ssh's own default / the user's ssh config".

    Args:
        known_hosts: file for ``UserKnownHostsFile`` (host keys are always checked).
        identity_file: private key for ``IdentityFile`` (with ``IdentitiesOnly=yes``).
        config_file: ``ssh -F`` file; ``"none"`` ignores ``~/.ssh/config``.
        connect_timeout_s: ``ConnectTimeout``.
        alive_interval_s / alive_count_max: ``ServerAliveInterval`` / ``ServerAliveCountMax``.
        retries: extra attempts after a dropped connection (0 = no retry).
        backoff_s: wait before the first retry; doubled on each further retry.
        command_timeout_s: default bound for one remote command.
        path_prepend: folders put in front of the remote ``PATH`` (e.g. ``/usr/src/tensorrt/bin``).
        multiplex: share one SSH connection between the commands of a session (``ControlMaster``);
            a session's master is stopped when the session ends.
    """

    known_hosts: Path | None = None
    identity_file: Path | None = None
    config_file: str | None = None
    connect_timeout_s: int = 10
    alive_interval_s: int = 5
    alive_count_max: int = 3
    retries: int = 3
    backoff_s: float = 1.0
    command_timeout_s: float = 600.0
    path_prepend: tuple[str, ...] = ()
    multiplex: bool = True
    ssh_bin: str = "ssh"
    scp_bin: str = "scp"

    @classmethod
    def from_options(cls, options: Mapping[str, Any], **overrides: Any) -> SshSettings:
        """Settings from target options (:data:`SSH_OPTIONS`), checked up front."""
        s = cls(**overrides)
        kw: dict[str, Any] = {}
        for key in ("known_hosts", "identity_file"):
            if options.get(key) is not None:
                p = Path(str(options[key])).expanduser()
                if not p.is_file():
                    raise ConfigError(f"target option {key}: file not found: {p}", hint="give an existing file")
                kw[key] = p
        if options.get("ssh_config") is not None:
            cfg = str(options["ssh_config"])
            if cfg != "none" and not Path(cfg).expanduser().is_file():
                raise ConfigError(f"target option ssh_config: file not found: {cfg}",
                                  hint="give an ssh client config file, or 'none' to ignore ~/.ssh/config")
            kw["config_file"] = cfg if cfg == "none" else str(Path(cfg).expanduser())
        for key, attr, lo in (("connect_timeout_s", "connect_timeout_s", 1), ("ssh_retries", "retries", 0),
                              ("remote_timeout_s", "command_timeout_s", 1)):
            if options.get(key) is not None:
                try:
                    v = float(options[key])
                except (TypeError, ValueError):
                    v = -1.0
                if v < lo:
                    raise ConfigError(f"target option {key} must be a number >= {lo}, got {options[key]!r}",
                                      hint=f"e.g. {key}: {max(lo, 10)}")
                kw[attr] = int(v) if attr in ("connect_timeout_s", "retries") else v
        return replace(s, **kw)

    def client_options(self) -> list[str]:
        """``-F`` / ``-o`` options shared by ``ssh`` and ``scp`` (no port: the flag differs)."""
        opts: list[str] = []
        if self.config_file:
            opts += ["-F", self.config_file]
        opts += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                 "-o", f"ConnectTimeout={int(self.connect_timeout_s)}",
                 "-o", f"ServerAliveInterval={int(self.alive_interval_s)}",
                 "-o", f"ServerAliveCountMax={int(self.alive_count_max)}",
                 "-o", "LogLevel=ERROR"]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.identity_file:
            opts += ["-o", f"IdentityFile={self.identity_file}", "-o", "IdentitiesOnly=yes"]
        return opts
