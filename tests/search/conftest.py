"""Fixtures for the pipeline tests: a throwaway PostgreSQL server for the ``postgres`` tests.

The server is Debian's ``postgresql`` package (``/usr/lib/postgresql/*/bin/initdb`` and
``pg_ctl``), initialised in a fresh temp folder and listening on a free loopback port only (no
Unix socket), with ``trust`` authentication and fsync off. PostgreSQL refuses to run as root, so
as root the server runs as the ``postgres`` user the package creates (``runuser -u postgres``).
Tests that need it skip, with the reason, where the server, the user or ``psycopg2`` is missing.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

_INSTALL = "apt-get install -y postgresql"


def _pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: Debian's versioned folder (newest first), else PATH."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                    if Path(p).parent.name.isdigit() else 0, reverse=True):
        if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists():
            return Path(d)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return Path(initdb).parent if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    bin: Path
    datadir: Path
    port: int
    as_user: list[str]  # command prefix that runs a program as the server's user

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.datadir), *args],
                              capture_output=True, text=True, timeout=60, check=check)

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg2

        name = f"optuna_{uuid.uuid4().hex[:10]}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


def _runner_prefix() -> list[str] | str:
    """How to run the server's programs: as ourselves, or as 'postgres' when we are root (else why not)."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "running as root and there is no 'postgres' user to run the server as (the postgresql package makes one)"
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    return "running as root and runuser (util-linux) is missing"


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server on 127.0.0.1:<free port>, stopped and deleted after the session."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL is not installed (no initdb / pg_ctl): {_INSTALL}")
    if importlib.util.find_spec("psycopg2") is None:
        pytest.skip("psycopg2 is not installed: pip install '.[postgres]'")
    prefix = _runner_prefix()
    if isinstance(prefix, str):
        pytest.skip(prefix)
    datadir = Path(tempfile.mkdtemp(prefix="edge-pg-"))  # under /tmp: the postgres user can reach it
    if prefix:
        shutil.chown(datadir, "postgres", "postgres")
    init = subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust",
                           "-E", "UTF8", "--no-sync"], capture_output=True, text=True, timeout=120, check=False)
    if init.returncode != 0:
        shutil.rmtree(datadir, ignore_errors=True)
        pytest.skip(f"initdb failed: {(init.stderr or init.stdout).strip()[-300:]}")
    server = None
    for _ in range(3):
        port = _free_port()
        srv = PostgresServer(bin_dir, datadir, port, prefix)
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off " \
               f"-c full_page_writes=off -c max_connections=50"
        r = srv.pg_ctl("-o", opts, "-l", str(datadir / "server.log"), "-w", "-t", "30", "start", check=False)
        if r.returncode == 0:
            server = srv
            break
        time.sleep(0.2)
    if server is None:
        log = (datadir / "server.log").read_text(errors="replace")[-300:] if (datadir / "server.log").exists() else ""
        shutil.rmtree(datadir, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {log.strip()}")
    try:
        yield server
    finally:
        server.pg_ctl("-m", "immediate", "stop", check=False)
        shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a fresh database on the session's PostgreSQL server."""
    return postgres_server.create_database()
