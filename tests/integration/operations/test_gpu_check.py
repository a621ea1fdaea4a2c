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
    rest = _check(
        tmp_path,
        "rest",
        "--budget-seconds",
        "300",
        "--steps",
        "eager,compile,onnx,service,batching,previews,transformers",
    )
    ran |= set(rest["results"])
    steps = ("torch eager", "torch compile", "LoRA after compile", "onnx runtime", "service queue of 20", "batching")
    for step in steps:
        assert f"tiny: {step}" in ran, step
    assert rest["results"]["tiny: LoRA after compile"]["lora_changes_compiled_output"] is True
    assert rest["results"]["tiny: service queue of 20"]["completed"] == 20
    batching = rest["results"]["tiny: batching"]
    assert {"batch_max_1", "batch_max_4", "batch_max_8"} <= set(batching), batching
    assert all(batching[f"batch_max_{n}"]["images_per_second"] > 0 for n in (1, 4, 8))
    previews = rest["results"]["tiny: live previews"]
    assert set(previews["step_s"]) == {"off", "default (every 5)", "every step"} and previews["preview_kb"] > 0
    # The transformer families' steps (the real architectures on a lent GPU; their tiny models here).
    for variant in ("sd3", "flux", "flux-dev", "z-image"):
        figures = rest["results"][f"tiny {variant}: images"]
        assert figures["seconds_per_image"] > 0 and figures["images_per_second_batch4"] > 0, figures


def test_the_full_transformer_architectures_have_their_published_sizes(tmp_path):
    """What a lent GPU builds, built here on torch's meta device (no memory): the configs are the published models'
    (parameter counts in billions, to the first decimal: SD 3.5 Medium's MMDiT-X, FLUX.1's 12B, Z-Image's 6B, and
    their text encoders)."""
    from bench.transformer_families import ARCHITECTURES, build_on

    def billions(module) -> float:
        return round(sum(parameter.numel() for parameter in module.parameters()) / 1e9, 1)

    expected = {
        "sd35-medium": (2.2, [0.1, 0.7, 4.8]),
        "flux1-schnell": (11.9, [0.1, 4.8]),
        "flux1-dev": (11.9, [0.1, 4.8]),
        "z-image-turbo": (6.2, [4.0]),
    }
    for architecture in ARCHITECTURES:
        pipeline = build_on("meta", architecture.build, tmp_path / architecture.name)
        encoders = [getattr(pipeline, name, None) for name in ("text_encoder", "text_encoder_2", "text_encoder_3")]
        found = (billions(pipeline.transformer), [billions(encoder) for encoder in encoders if encoder is not None])
        assert found == expected[architecture.name], architecture.name
