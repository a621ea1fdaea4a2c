"""bench/gpu_check.py runs on this CPU as CI runs it, so the script is known good before a GPU is lent: every step
in one of two runs (the budget of the first stops it early on a busy machine), none failing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.benchmark]


def _check(tmp_path: Path, name: str, *arguments: str) -> dict:
    out, work = tmp_path / f"{name}-out", tmp_path / "work"
    command = [
        sys.executable,
        "-m",
        "bench.gpu_check",
        "--device",
        "cpu",
        "--tiny",
        "--out",
        str(out),
        "--work",
        str(work),
    ]
    result = subprocess.run([*command, *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    document = json.loads((out / "gpu-check.json").read_text())
    assert (out / "gpu-check.md").read_text().startswith("| step | figures |")
    assert document["failures"] == []
    return document


def test_the_gpu_check_runs_every_step_on_a_cpu(tmp_path):
    first = _check(tmp_path, "ci", "--budget-seconds", "60")  # the invocation CI is asked to run
    ran = set(first["results"])
    assert {"environment", "tiny: contract"} <= ran
    contract = first["results"]["tiny: contract"]
    assert contract["same_seed_same_pixels"] and contract["batch_image_k_is_seed_plus_k"]
    assert contract["lora_swap_exact"] and contract["schedulers_failed"] == []
    assert contract["batch_members_match_their_own_runs"] is True
    # What the budget left out runs now, on its own budget: every kind of step has run once.
    rest = _check(tmp_path, "rest", "--budget-seconds", "300", "--steps", "eager,compile,onnx,service,batching")
    ran |= set(rest["results"])
    steps = ("torch eager", "torch compile", "LoRA after compile", "onnx runtime", "service queue of 20", "batching")
    for step in steps:
        assert f"tiny: {step}" in ran, step
    assert rest["results"]["tiny: LoRA after compile"]["lora_changes_compiled_output"] is True
    assert rest["results"]["tiny: service queue of 20"]["completed"] == 20
    batching = rest["results"]["tiny: batching"]
    assert {"batch_max_1", "batch_max_4", "batch_max_8"} <= set(batching), batching
    assert all(batching[f"batch_max_{n}"]["images_per_second"] > 0 for n in (1, 4, 8))
