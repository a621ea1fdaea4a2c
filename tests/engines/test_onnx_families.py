"""The ONNX path for SD 2.x (v-prediction) and SDXL: `python -m export` with a LoRA merged, served by the ONNX engine
with the same routing rules, and torch/ONNX parity (mean absolute pixel difference at most 1 of 255, fp32)."""

from __future__ import annotations

import json

import pytest

from tests.support.adapter_files import model_modules, sdxl_modules, write_adapter
from tests.support.onnx_services import onnx_beside_torch
from tests.support.services import data_url, fetch_image, gradient_image, mean_abs_diff
from tests.support.services import fetch_pixels as pixels
from tests.support.services import generate as run

pytestmark = [pytest.mark.slow]

PARITY = 1.0
FAST = {"prompt": "a harbour at night", "seed": 7, "width": 64, "height": 64, "num_inference_steps": 3}


@pytest.fixture(scope="module", params=["sd2-v", "sdxl"])
def family(request, tmp_path_factory, tiny_sd2v, tiny_sdxl):
    """The model, a LoRA folder, an export with that LoRA merged, and an ONNX and a torch service over them."""
    model = {"sd2-v": tiny_sd2v, "sdxl": tiny_sdxl}[request.param]
    loras = tmp_path_factory.mktemp(f"{request.param}-loras")
    modules = sdxl_modules(model) if request.param == "sdxl" else model_modules(model)
    write_adapter(loras / "style.safetensors", modules, "loha", seed=3)
    with onnx_beside_torch(tmp_path_factory, request.param, model, loras / "style.safetensors", 0.8) as (
        export,
        onnx,
        torch_service,
    ):
        yield request.param, export, onnx, torch_service


MERGED = [{"name": "style", "weight": 0.8}]


def test_the_export_records_its_family_and_parts(family):
    name, export, _, _ = family
    manifest = json.loads((export / "export.json").read_text())
    assert manifest["family"] == {"sd2-v": "sd2", "sdxl": "sdxl"}[name]
    assert (export / "text_encoder_2" / "model.onnx").is_file() == (name == "sdxl")


def test_onnx_matches_torch_with_the_merged_lora(family):
    _, _, onnx, torch_service = family
    with onnx.client() as on_onnx, torch_service.client() as on_torch:
        for scheduler in (None, "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"):
            body = {**FAST, "loras": MERGED, "num_images": 2, **({"scheduler": scheduler} if scheduler else {})}
            served, reference = run(on_onnx, **body), run(on_torch, **body)
            assert served["engine"] == "onnx" and reference["engine"] == "torch", (served, reference)
            for k in range(2):
                assert mean_abs_diff(pixels(served["result_urls"][k]), pixels(reference["result_urls"][k])) <= PARITY
        # Another LoRA set than the merged one runs on torch (the same routing rule as SD 1.5).
        assert run(on_onnx, **FAST)["engine"] == "torch"


def test_onnx_image_to_image_matches_torch(family):
    _, _, onnx, torch_service = family
    init = data_url(gradient_image(130, 100))
    with onnx.client() as on_onnx, torch_service.client() as on_torch:
        body = {**FAST, "init_image": init, "strength": 0.7, "loras": MERGED}
        served, reference = run(on_onnx, **body), run(on_torch, **body)
    assert served["engine"] == "onnx" and fetch_image(served["result_url"]).size == (128, 96)
    assert mean_abs_diff(pixels(served["result_url"]), pixels(reference["result_url"])) <= PARITY
