"""deploy/compose-up's messages for what a first start trips over (no Docker needed for these; the
opt-in Docker test runs it for real, failure and cleanup included)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "compose-up"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "name a profile: cpu, vllm-cpu or gpu"),
        (("tpu",), "unknown profile 'tpu'"),
        (("--remote", "cpu"), "unknown option --remote"),
        (("-p",), "-p needs a name"),
    ],
)
def test_usage_mistakes_name_the_fix(args: tuple[str, ...], message: str) -> None:
    proc = _run(*args)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr


def test_help_lists_the_profiles() -> None:
    proc = _run("--help")
    assert proc.returncode == 0 and "vllm-cpu" in proc.stdout and "--local" in proc.stdout


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client on PATH")
def test_a_daemon_that_does_not_answer_is_named(tmp_path: Path) -> None:
    proc = _run("cpu", DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
    assert proc.returncode == 1 and "the Docker daemon does not answer" in proc.stderr, proc.stderr


def test_no_docker_client_is_named(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "sed", "id"):  # what the script needs before it looks for docker
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    proc = subprocess.run(
        [bash, str(SCRIPT), "cpu"], capture_output=True, text=True, timeout=60, env={"PATH": str(bin_dir)}
    )
    assert proc.returncode == 1 and "no docker client" in proc.stderr, proc.stderr
