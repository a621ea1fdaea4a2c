"""A run's facts travel with its images: the scheduler, dtype, device and engine recorded in each image (its JSON
record, its infotext, the task's engine) are those of the run that made it, not of the default model or of the
engine a router would have preferred."""

from __future__ import annotations

import json

import httpx
import pytest

from sdapi.media.provenance import parse_infotext, read_embedded
from tests.support.services import generate

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}


def _record(result: dict) -> tuple[dict, dict]:
    """The JSON record and the parsed infotext embedded in a task's first image."""
    infotext, record = read_embedded(httpx.get(result["result_url"]).content)
    assert infotext is not None and record is not None
    return json.loads(record), parse_infotext(infotext)


@pytest.fixture(scope="module")
def two_models(make_service, tiny_model, tiny_sd2v):
    """An SD 1.5 (its own scheduler PNDM) as default and an SD 2-v (its own DDIM) as `second`."""
    models = [{"name": "base", "path": str(tiny_model)}, {"name": "second", "path": str(tiny_sd2v)}]
    return make_service("facts-models", models=models, model={"dtype": "float32"})


def test_a_task_on_a_second_model_records_that_models_scheduler(two_models):
    with two_models.client() as client:
        on_second = generate(client, prompt="a lake", seed=3, model="second", **SMALL)
        on_default = generate(client, prompt="a lake", seed=3, **SMALL)
    record, info = _record(on_second)
    assert (record["scheduler"], info["Sampler"]) == ("DDIMScheduler", "DDIM")
    assert (record["engine"], record["dtype"], record["device"]) == ("torch", "float32", "cpu")
    assert record["model"]["source"].rstrip("/").endswith("tiny-sd2-v")
    record, info = _record(on_default)
    assert (record["scheduler"], info["Sampler"]) == ("PNDMScheduler", "PLMS")


def test_a_task_routed_from_onnx_to_torch_records_the_torch_run(make_service, tiny_model, plain_export):
    """auto: what the export serves runs on ONNX; a size its traced UNet cannot take falls back to torch (bf16
    here, so the two runs differ in dtype as well as engine)."""
    service = make_service(
        "facts-fallback",
        model={"onnx_path": str(plain_export), "engine": "auto", "dtype": "bfloat16"},
    )
    with service.client() as client:
        on_torch = generate(client, prompt="a lake", seed=3, width=72, height=64, num_inference_steps=2)
    assert on_torch["status"] == "completed" and on_torch["engine"] == "torch"
    record, info = _record(on_torch)
    assert (record["engine"], record["dtype"], record["device"]) == ("torch", "bfloat16", "cpu")
    assert record["scheduler"] == "PNDMScheduler" and info["Sampler"] == "PLMS"
