"""`sdapi generate`, `sdapi tasks` and `sdapi cancel` as a user runs them, against the real running service: files
written, and an exit code for each outcome."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from tests.support.services import API_KEY, REPO_ROOT, gradient_image, wait_for_task


@pytest.fixture(scope="module")
def service(make_service):
    return make_service("cli-client")


def sdapi(service, *arguments, key=API_KEY, **options):
    """Run the CLI with the service's URL and key from the environment, as SDAPI_URL / SDAPI_API_KEY."""
    environment = {**os.environ, "SDAPI_URL": service.url, "SDAPI_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "sdapi", *arguments],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        **options,
    )


def test_generate_writes_the_images_with_their_seeds(service, tmp_path):
    done = sdapi(
        service,
        "generate",
        "a castle",
        "--out",
        str(tmp_path),
        "--n",
        "2",
        "--seed",
        "42",
        "--size",
        "128x64",
        "--steps",
        "2",
    )
    assert done.returncode == 0, done.stderr
    written = sorted(path.name for path in tmp_path.iterdir())
    assert len(written) == 2 and written[0].endswith("-seed42.png") and written[1].endswith("-seed43.png")
    assert Image.open(tmp_path / written[0]).size == (128, 64)
    assert done.stdout.split() == [str(tmp_path / name) for name in written]
    assert "task " in done.stderr and "completed" in done.stderr  # progress lines, plain when not a terminal
    jpeg = sdapi(
        service, "generate", "x", "--out", str(tmp_path / "jpg"), "--format", "jpg", "--size", "64x64", "--steps", "1"
    )
    assert jpeg.returncode == 0 and Image.open(next((tmp_path / "jpg").iterdir())).format == "JPEG"


def test_image_to_image_and_tasks(service, tmp_path):
    gradient_image(96, 64).save(tmp_path / "photo.png")
    done = sdapi(
        service,
        "generate",
        "paint",
        "--out",
        str(tmp_path / "out"),
        "--init-image",
        str(tmp_path / "photo.png"),
        "--strength",
        "0.5",
        "--steps",
        "2",
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(next((tmp_path / "out").iterdir())).size == (96, 64)
    listed = sdapi(service, "tasks", "--limit", "3")
    assert listed.returncode == 0
    task_id = done.stderr.split("task ", 1)[1].split()[0]
    assert task_id in listed.stdout and "completed" in listed.stdout


def test_exit_codes(service, tmp_path):
    refused = sdapi(service, "generate", "x", "--size", "100x100", "--out", str(tmp_path))
    assert refused.returncode == 2 and "width" in refused.stderr  # the service's own words
    assert sdapi(service, "generate", "x", "--size", "huge").returncode == 2  # argparse usage error
    wrong_key = sdapi(service, "tasks", key="not-a-key")
    assert wrong_key.returncode == 2 and "API Key 无效" in wrong_key.stderr
    unreachable = sdapi(service, "tasks", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr
    missing = sdapi(service, "cancel", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and "任务不存在" in missing.stderr


def test_a_task_cancelled_while_generate_waits_exits_1_and_cancel_works(service, tmp_path):
    environment = {**os.environ, "SDAPI_URL": service.url, "SDAPI_API_KEY": API_KEY}
    waiting = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sdapi",
            "generate",
            "long",
            "--size",
            "512x512",
            "--steps",
            "150",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with service.client() as client:
        deadline = time.monotonic() + 60
        while not (tasks := client.get("/api/v1/tasks?status=processing").json()["tasks"]):
            assert time.monotonic() < deadline and waiting.poll() is None
            time.sleep(0.1)
        task_id = tasks[0]["task_id"]
        cancelled = sdapi(service, "cancel", task_id)
        assert cancelled.returncode == 0 and task_id in cancelled.stdout
        assert wait_for_task(client, task_id)["error_code"] == "cancelled"
    _, stderr = waiting.communicate(timeout=60)
    assert waiting.returncode == 1 and "cancelled" in stderr
    again = sdapi(service, "cancel", task_id)
    assert again.returncode == 1 and "无法取消" in again.stderr
    assert list(tmp_path.iterdir()) == []
