"""Containers of the real sdapi image, run by Debian's podman: the image built once per test run, containers started
with the limits and runtime this machine needs, and always removed."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import REPO_ROOT
from tests.support.shared_builds import built_once

IMAGE = "localhost/sdapi:cpu"  # what `make image` tags sdapi:cpu
# runc where installed (as deploy/image/build.sh), not podman's default crun: crun refuses a hybrid cgroup v1/v2
# layout, which CI machines have.
PODMAN = ["podman", *(["--runtime", "runc"] if shutil.which("runc") else [])]


def podman(*arguments: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run podman; a failure raises with its own words."""
    result = subprocess.run([*PODMAN, *arguments], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(arguments[:2])} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def built_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CPU image, built by `make image`'s script once per run (podman's layer cache makes a rebuild with
    unchanged inputs take seconds); its build log is kept beside the shared test builds."""

    def build(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / "build.log"
        with log.open("w", encoding="utf-8") as output:
            result = subprocess.run(
                [str(REPO_ROOT / "deploy" / "image" / "build.sh"), "--variant", "cpu", "--tag", "sdapi:cpu"],
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=2400,
            )
        if result.returncode != 0:
            tail = "\n".join(log.read_text(encoding="utf-8").splitlines()[-30:])
            raise RuntimeError(f"the image did not build ({result.returncode}); the end of {log}:\n{tail}")

    built_once(tmp_path_factory, "sdapi-image", build)
    return IMAGE


def run_limits() -> list[str]:
    """This process's open-file limit and podman's default process limit, or less: asking for more than the host
    allows fails the container's start ("error setting rlimits")."""
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    if processes < 0:  # RLIM_INFINITY
        processes = 32768
    return ["--ulimit", f"nofile={files}:{files}", "--ulimit", f"nproc={processes}:{processes}"]


class Container:
    """One running container (`podman run -d`), removed on exit whatever happened."""

    def __init__(self, name: str, image: str, *run_options: str, command: list[str] | None = None) -> None:
        self.name = name
        self._arguments = ["run", "-d", "--name", name, *run_limits(), *run_options, image, *(command or [])]

    def __enter__(self) -> Container:
        podman("rm", "-f", "--ignore", self.name)  # a container left by an interrupted run
        podman(*self._arguments)
        return self

    def __exit__(self, *exc: object) -> None:
        podman("rm", "-f", "--time", "0", self.name, check=False)

    def inspect(self) -> dict[str, Any]:
        [found] = json.loads(podman("inspect", self.name).stdout)
        return dict(found)

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def stop(self, timeout: int) -> float:
        """`podman stop`: SIGTERM (the image's stop signal), SIGKILL after `timeout` s; return the seconds it took."""
        started = time.monotonic()
        podman("stop", "--time", str(timeout), self.name, timeout=timeout + 120)
        return time.monotonic() - started

    def start(self) -> None:
        """Start the stopped container again: same writable layer, so the same SQLite database and images."""
        podman("start", self.name)

    def run(self, *command: str) -> str:
        """`command`'s output, run in the container as its own user."""
        return podman("exec", self.name, *command).stdout

    def wait_healthy(self, timeout: float = 300.0) -> None:
        """Run the image's HEALTHCHECK until podman records the container healthy (podman schedules the check with
        systemd timers, which this machine's containers lack; `healthcheck run` is the same check, run now)."""
        deadline = time.monotonic() + timeout
        while podman("healthcheck", "run", self.name, check=False).returncode != 0:
            state = self.inspect()["State"]
            if not state["Running"]:
                raise AssertionError(f"{self.name} exited ({state['ExitCode']}):\n{self.logs()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not healthy within {timeout:g}s:\n{self.logs()[-4000:]}")
            time.sleep(1.0)
        health = self.inspect()["State"]["Health"]
        assert health["Status"] == "healthy", health


POSTGRES_IMAGE = "localhost/sdapi-test-postgres:15"


def built_postgres_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/container/postgres: a stand-in for the registry's postgres image on the Debian base that
    deploy/image/debian-base.sh builds (or finds), built once per run."""

    def build(folder: Path) -> None:
        base = subprocess.run(
            [str(REPO_ROOT / "deploy" / "image" / "debian-base.sh")],
            capture_output=True,
            text=True,
            timeout=1200,
            check=True,
        ).stdout.split()[-1]
        podman(
            "build",
            "--format",
            "docker",
            "--network",
            "host",
            *run_limits(),
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--tag",
            POSTGRES_IMAGE,
            str(REPO_ROOT / "tests" / "container" / "postgres"),
            timeout=1200,
        )

    built_once(tmp_path_factory, "postgres-image", build)
    return POSTGRES_IMAGE
