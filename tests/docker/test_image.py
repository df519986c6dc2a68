"""The Docker image, built from the repository's Dockerfile and run for real.

Marked ``docker`` and ``slow``; run with ``make test-docker``. The session fixture:

1. installs docker.io and debootstrap with apt when they are missing (skips with the reason if
   that fails or this is not root);
2. starts a private ``dockerd`` (``docker/dockerd.sh``: its own data root, exec root, pid file and
   socket; no bridge, no iptables changes) and remembers its PID, unless ``EDGE_DOCKER_HOST`` names
   a daemon to use instead;
3. builds or reuses the local base image (``docker/make_base.sh``: debootstrap bookworm with
   Debian's python3.11, cached in the data root and as a tarball), because Docker Hub cannot be
   reached here;
4. builds the image (``docker/build.sh --flavour local``) with the host's CA bundle as a BuildKit
   secret, the pip cache as a BuildKit cache mount;
5. at the end, always: stops that dockerd by its PID and removes its runtime folder (the data root
   in ``~/.cache/edge-pipeline/docker`` stays, so the next session rebuilds from cache).

The runs use ``--network none`` and a read-only root filesystem, so nothing is downloaded or
written outside ``/runs`` and ``/tmp`` at run time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("EDGE_DOCKER_IMAGE", "edge-pipeline:test")
STATE = Path(os.environ.get("EDGE_DOCKER_STATE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-pipeline" / "docker")
IMAGE_UID = 10001  # Dockerfile: ARG PIPELINE_UID

# The embedded default's model and data (ResNet-20 on digits, weights from the package) with short
# measurements and recovery: about 1.5 minutes on 2 cores instead of 2.5. The verdict rests on the
# accuracy floor, measured through the engine on the fixed test split, because this machine is
# shared with latency benchmarks: in this test a 2x MAC cut once measured 1.05x against a 1.5x
# latency budget (exit 1). The latency path is still exercised (the search measures every
# candidate, `measure` the final model), and the impossible latency budget below must exit 1.
# `pipeline run --dry-run` with no --config checks that the embedded default itself resolves.
DOCKER_YAML = """
model: example:digits-resnet
data: digits
target: cpu
objective: accuracy
constraints: {max_accuracy_drop: 3.0}
criterion: magnitude-l2
recovery: {steps: 60, tune_steps: 0, batch_size: 32}
measure: {warmup_s: 0.05, min_duration_s: 0.25, min_iters: 20, final_rounds: 2, verdict_level: 0.75, candidate_rounds: 2,
          candidate_duration_s: 0.15}
tune: {max_candidates: 6, time_limit_s: 120, min_step: 0.1}
"""


@dataclass
class Docker:
    bin: str
    env: dict[str, str]
    image: str
    timings: dict[str, float] = field(default_factory=dict)

    def __call__(self, *args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
        p = subprocess.run([self.bin, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        return p

    def run(self, *args: str, mount: Path | None = None, entrypoint: str | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess:
        """``docker run --rm --network none --read-only`` the image with ARGS."""
        opts = ["run", "--rm", "--network", "none", "--no-healthcheck", "--read-only", "--tmpfs", "/tmp"]
        if mount is not None:
            opts += ["-v", f"{mount}:/runs"]
        if entrypoint is not None:
            opts += ["--entrypoint", entrypoint]
        return self(*opts, self.image, *args, timeout=timeout)


def _script(name: str, env: dict[str, str], timeout: float, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "docker" / name), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _kv(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _stop_by_pid(pid: int, timeout: float = 30) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.25)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def docker(request, tmp_path_factory) -> Docker:
    t0 = time.monotonic()
    env = dict(os.environ)
    env.pop("DOCKER_HOST", None)
    started_pid: int | None = None
    run_dir: str | None = None
    lock = None
    report = request.config.pluginmanager.get_plugin("terminalreporter")

    if os.environ.get("EDGE_DOCKER_HOST"):
        # a daemon someone else runs: use it, never stop it
        env["DOCKER_HOST"] = os.environ["EDGE_DOCKER_HOST"]
        docker_bin = os.environ.get("DOCKER") or shutil.which("docker") or "docker"
    else:
        docker_bin, started_pid, run_dir, lock = _private_daemon(env)
    env["DOCKER"] = docker_bin
    env.pop("DOCKER_BUILDKIT", None)
    d = Docker(bin=docker_bin, env=env, image=IMAGE)
    d.timings["daemon_s"] = time.monotonic() - t0

    def finish() -> None:
        if started_pid is not None:
            d("image", "prune", "-f", timeout=120)  # dangling images of earlier builds
        _cleanup(started_pid, run_dir, lock)
        d.timings["session_s"] = time.monotonic() - t0
        line = "docker image test: " + ", ".join(
            f"{k[:-3]} {v:.0f} MB" if k.endswith("_mb") else f"{k[:-2]} {v:.0f}s" for k, v in d.timings.items())
        if report is not None:
            report.write_line(line)
        try:
            (STATE / "last-session.json").write_text(json.dumps(d.timings, indent=1))
        except OSError:
            pass

    request.addfinalizer(finish)
    _build_image(d, env, tmp_path_factory.mktemp("build") / "build.log")
    return d


def _private_daemon(env: dict) -> tuple[str, int | None, str, object]:
    """Start (or join) the private dockerd on our data root; returns (docker binary, pid we started, run dir, lock)."""
    if os.geteuid() != 0:
        pytest.skip("the private dockerd needs root (or set EDGE_DOCKER_HOST=unix:///path/docker.sock "
                    "to use a running daemon)")
    p = _script("install-deps.sh", env, 900)
    if p.returncode != 0:
        pytest.skip(f"docker.io / debootstrap could not be installed with apt: {(p.stderr or p.stdout).strip()[-300:]}")
    STATE.mkdir(parents=True, exist_ok=True)
    # One session at a time per data root: a second one waits (builds are heavy anyway).
    lock = open(STATE / "session.lock", "w")
    deadline = time.monotonic() + 1800
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.skip(f"another docker test session holds {STATE / 'session.lock'}")
            time.sleep(2)
    run_dir = f"/tmp/edge-dockerd-test-{os.getpid()}"
    env.update(EDGE_DOCKER_STATE=str(STATE), EDGE_DOCKER_RUN=run_dir)
    p = _script("dockerd.sh", env, 120, "start")
    info = _kv(p.stdout)
    started_pid = None
    if info.get("DOCKERD_STARTED") == "1":  # a daemon already serving this data root is left running
        started_pid = int(info["DOCKERD_PID"])
    if p.returncode != 0:
        _cleanup(started_pid, run_dir, lock)
        pytest.fail(f"dockerd did not start:\n{p.stdout}\n{p.stderr}")
    env["DOCKER_HOST"] = info["DOCKER_HOST"]
    return info["DOCKER"], started_pid, run_dir, lock


def _build_image(d: Docker, env: dict, log: Path) -> None:
    """The local debootstrap base, then the image on it; timings and size into ``d.timings``."""
    t = time.monotonic()
    p = _script("make_base.sh", env, 1200)
    if p.returncode != 0:
        pytest.fail(f"local base image: {p.stderr.strip()[-2000:]}")
    base = p.stdout.strip().splitlines()[-1]
    d.timings["base_s"] = time.monotonic() - t

    t = time.monotonic()
    p = _script("build.sh", env, 3600, "--flavour", "local", "--base", base, "-t", IMAGE)
    log.write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        pytest.fail(f"docker build failed ({log}):\n{(p.stdout + p.stderr)[-4000:]}")
    d.timings["build_s"] = time.monotonic() - t
    d.timings["image_mb"] = int(d("image", "inspect", "-f", "{{.Size}}", IMAGE, check=True).stdout) / 1e6


def _cleanup(pid: int | None, run_dir: str | None, lock) -> None:
    if pid is not None:
        _stop_by_pid(pid)
        # dockerd leaves its netns/default mount behind: unmount, then remove the run dir
        env = dict(os.environ, EDGE_DOCKER_STATE=str(STATE))
        _script("dockerd.sh", env, 60, "cleanup", run_dir or "")
        if run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    if lock is not None:
        lock.close()


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A host folder mounted at /runs, writable by the image's non-root user, with the test config."""
    d = tmp_path / "runs"
    d.mkdir()
    d.chmod(0o777)
    (d / "docker.yaml").write_text(DOCKER_YAML)
    return d


def test_run_meets_budget_as_non_root_without_network(docker: Docker, runs: Path):
    t = time.monotonic()
    p = docker.run("run", "--config", "/runs/docker.yaml", "--out", "/runs/r1", "--quiet", mount=runs)
    docker.timings["run_met_s"] = time.monotonic() - t
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rep = json.loads((runs / "r1" / "report.json").read_text())
    assert rep["constraints"]["met"] is True and rep["constraints"]["violations"] == []
    assert rep["final"]["measured_on"].startswith("cpu:") and rep["final"]["macs"] < rep["baseline"]["macs"]
    for name in ("report.json", "manifest.json", "model.onnx", "policy.json"):
        st = (runs / "r1" / name).stat()
        assert st.st_uid == IMAGE_UID != 0, f"{name} owned by uid {st.st_uid}"
    ident = docker.run(entrypoint="id")
    assert ident.returncode == 0, ident.stderr
    assert f"uid={IMAGE_UID}(pipeline) gid={IMAGE_UID}(pipeline)" in ident.stdout, ident.stdout


def test_impossible_budget_exits_1(docker: Docker, runs: Path):
    t = time.monotonic()
    p = docker.run("run", "--config", "/runs/docker.yaml", "--objective", "latency", "--latency-ms", "0.0001",
                   "--recovery-steps", "0",
                   "--out", "/runs/r2", "--quiet", mount=runs)
    docker.timings["run_unmet_s"] = time.monotonic() - t
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    rep = json.loads((runs / "r2" / "report.json").read_text())
    assert rep["constraints"]["met"] is False
    assert any("latency" in v for v in rep["constraints"]["violations"])


def test_bad_input_exits_2_with_one_line(docker: Docker, runs: Path):
    p = docker.run("run", "--model", "nosuch:thing", "--out", "/runs/r3", mount=runs)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "error" in (p.stdout + p.stderr).lower()


def test_embedded_default_resolves_in_the_installed_package(docker: Docker):
    # `pipeline run` with no --config must find the embedded default in a non-editable install
    p = docker.run("run", "--dry-run")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "example:digits-resnet" in p.stdout and "speedup: 2.0" in p.stdout


def test_no_arguments_prints_help(docker: Docker):
    p = docker("run", "--rm", "--network", "none", docker.image, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Usage: pipeline" in p.stdout and "run" in p.stdout


def test_image_metadata_non_root_entrypoint_volume_healthcheck(docker: Docker):
    cfg = json.loads(docker("image", "inspect", docker.image, check=True).stdout)[0]["Config"]
    assert cfg["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert cfg["Entrypoint"] == ["pipeline"] and cfg["Cmd"] == ["--help"]
    assert "/runs" in (cfg.get("Volumes") or {}) and cfg["WorkingDir"] == "/runs"
    assert cfg["Healthcheck"]["Test"] == ["CMD", "pipeline", "targets"]
    assert not any(e.startswith(("PIP_CERT=", "PIP_CONFIG_FILE=")) for e in cfg["Env"])
    assert any(e.startswith("PATH=/opt/venv/bin:") for e in cfg["Env"])
    # the health check command itself works offline, as the image's user
    p = docker.run("targets")
    assert p.returncode == 0 and "cpu" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]


def test_weights_ship_in_the_installed_package_and_nothing_else_leaks(docker: Docker):
    code = ("from importlib import resources as r; import hashlib, stages.load as s; "
            "p = r.files('stages.load') / 'weights' / 'digits_resnet20_w32.pt'; "
            "print(p); print(hashlib.sha256(p.read_bytes()).hexdigest()); print(s.__file__)")
    p = docker.run("-c", code, entrypoint="python")
    assert p.returncode == 0, p.stderr
    path, digest, module = p.stdout.split()
    assert "/opt/venv/lib/" in path and "site-packages/stages/load/weights/" in path
    assert "site-packages" in module  # installed, not a source checkout
    repo = ROOT / "stages" / "load" / "weights" / "digits_resnet20_w32.pt"
    assert digest == hashlib.sha256(repo.read_bytes()).hexdigest()
    # no build context, no secrets, no pip cache in the final image
    p = docker.run("-c", "for f in /src /run/secrets/ca /run/secrets/pipconf /root/.cache/pip /opt/venv/.git; "
                   "do [ -e $f ] && echo present $f; done; true", entrypoint="sh")
    assert p.returncode == 0 and "present" not in p.stdout, p.stdout
