"""The ONNX path for the transformer families: `python -m export` exports SD 3.x and FLUX.1 with a LoRA (diffusers'
PEFT layout) merged into the transformer, the ONNX engine matches torch within 1 of 255 (fp32); FLUX.1's export
serves text-to-image only (optimum has no image-to-image or inpainting pipeline for it), so `engine: auto` runs its
edits on torch; FLUX.2 [klein] and Z-Image, which optimum cannot export, are refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from export.exporter import ExportError, export_model
from sdapi.families.detection import safetensors_keys
from tests.support.onnx_services import onnx_beside_torch
from tests.support.services import data_url, fetch_image, gradient_image, mean_abs_diff
from tests.support.services import fetch_pixels as pixels
from tests.support.services import generate as run

pytestmark = [pytest.mark.slow]

PARITY = 1.0
FAST = {"prompt": "a harbour at night", "seed": 7, "width": 64, "height": 64, "num_inference_steps": 3}
MERGED = [{"name": "style", "weight": 0.8}]


def write_transformer_lora(model_dir, path) -> None:
    """A PEFT-layout LoRA on the transformer's attention projections (small random factors)."""
    shapes = safetensors_keys(model_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    generator = torch.Generator().manual_seed(4)
    tensors = {}
    for key in [key for key in shapes if key.endswith(("to_q.weight", "to_v.weight"))][:6]:
        out_features, in_features = shapes[key]
        name = key.removesuffix(".weight")
        tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(4, in_features, generator=generator) * 0.3
        tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(out_features, 4, generator=generator) * 0.3
    save_file(tensors, str(path))


@pytest.fixture(scope="module", params=["sd3", "flux"])
def family(request, tmp_path_factory, tiny_transformer_models):
    """The model, a LoRA folder, an export with that LoRA merged, and an ONNX (auto) and a torch service."""
    model = tiny_transformer_models[request.param]
    loras = tmp_path_factory.mktemp(f"{request.param}-loras")
    write_transformer_lora(model, loras / "style.safetensors")
    defaults = {"width": None, "height": None}
    with onnx_beside_torch(
        tmp_path_factory, request.param, model, loras / "style.safetensors", 0.8, defaults=defaults
    ) as (export, onnx, torch_service):
        yield request.param, export, onnx, torch_service


def test_the_export_records_its_family_and_transformer(family):
    name, export, _, _ = family
    manifest = json.loads((export / "export.json").read_text())
    assert manifest["family"] == name
    assert (export / "transformer" / "model.onnx").is_file() and not (export / "unet").exists()


def test_onnx_matches_torch_with_the_merged_lora(family):
    name, _, onnx, torch_service = family
    guidance = {"guidance_scale": 5.0} if name == "sd3" else {}
    with onnx.client() as on_onnx, torch_service.client() as on_torch:
        for scheduler in (None, "UniPCMultistepScheduler"):
            body = {**FAST, **guidance, "loras": MERGED, "num_images": 2}
            body |= {"scheduler": scheduler} if scheduler else {}
            served, reference = run(on_onnx, **body), run(on_torch, **body)
            assert served["engine"] == "onnx" and reference["engine"] == "torch", (served, reference)
            for k in range(2):
                assert mean_abs_diff(pixels(served["result_urls"][k]), pixels(reference["result_urls"][k])) <= PARITY
        # Without the merged LoRA set the request runs on torch (the routing rule of every family).
        assert run(on_onnx, **FAST, **guidance)["engine"] == "torch"


def test_image_to_image_on_onnx_or_routed_to_torch(family):
    name, _, onnx, torch_service = family
    init = data_url(gradient_image(130, 100))
    guidance = {"guidance_scale": 5.0} if name == "sd3" else {}
    with onnx.client() as on_onnx, torch_service.client() as on_torch:
        body = {**FAST, **guidance, "init_image": init, "strength": 0.7, "loras": MERGED}
        served, reference = run(on_onnx, **body), run(on_torch, **body)
    assert fetch_image(served["result_url"]).size == (128, 96)
    # SD 3.x has optimum's image-to-image pipeline; FLUX.1's edits run on torch.
    assert served["engine"] == ("onnx" if name == "sd3" else "torch")
    assert mean_abs_diff(pixels(served["result_url"]), pixels(reference["result_url"])) <= PARITY


@pytest.mark.parametrize("variant", ["flux2-klein", "z-image"])
def test_what_optimum_cannot_export_is_refused_with_the_reason(tiny_transformer_models, tmp_path, variant):
    with pytest.raises(ExportError, match="optimum-onnx has no ONNX pipeline"):
        export_model(str(tiny_transformer_models[variant]), tmp_path / "onnx", [], progress=None)
    assert not (tmp_path / "onnx").exists()
