"""SD 3.x, FLUX.1 ([schnell] and [dev]), FLUX.2 [klein] and Z-Image over HTTP, one tiny model of each built by
`make-tiny-model` on one server: listed with their family, native size, guidance, defaults and schedulers;
text-to-image, image-to-image and inpainting through the native API, the `openai` SDK and `webuiapi`; the seed rule;
a flow scheduler recorded in the infotext, one outside the flow set refused with the list; the guidance and
negative-prompt rules; add-on kinds they do not run refused naming the families that do; and a LoRA in diffusers'
PEFT layout listed, applied and refused on a model it does not fit."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import openai
import pytest
import torch
import webuiapi
from PIL import Image
from safetensors.torch import save_file

from sdapi.families.detection import safetensors_keys
from sdapi.media.provenance import parse_infotext, read_embedded
from tests.fixtures.models import TRANSFORMER_TINY_VARIANTS
from tests.support.controlnet_files import tiny_controlnet, write_controlnet, write_transformer_controlnet
from tests.support.embedding_files import vectors, write_a1111_safetensors
from tests.support.services import (
    API_KEY,
    data_url,
    decided_loras,
    fetch_image,
    fetch_pixels,
    gradient_image,
    mean_abs_diff,
)
from tests.support.services import generate as run

# Small and few steps: each picture takes a fraction of a second. Sides are multiples of 16 (the transformer
# families' multiple).
SMALL = {"width": 64, "height": 64, "num_inference_steps": 3}
# The guidance each kind of model takes in the tests (a distilled model takes at most 1).
GUIDANCE = {"sd3": 5.0, "flux": 0.0, "flux-dev": 3.5, "flux-fill": 3.5, "flux2-klein": 1.0, "z-image": 0.0}
# The families with diffusers ControlNet pipelines, by tiny model.
CONTROLLED = ("sd3", "flux", "z-image")
FAMILY = {variant: variant.removesuffix("-dev").removesuffix("-fill") for variant in TRANSFORMER_TINY_VARIANTS}


def _lora_for(model_dir, path) -> None:
    """A PEFT-layout LoRA on the first attention projections of the model's transformer (random factors)."""
    shapes = safetensors_keys(model_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    generator = torch.Generator().manual_seed(9)
    projections = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")
    tensors = {}
    for key in [key for key in shapes if key.endswith(projections)][:8]:
        out_features, in_features = shapes[key]
        name = key.removesuffix(".weight")
        tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(4, in_features, generator=generator)
        tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(out_features, 4, generator=generator)
    assert tensors
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory, tiny_transformer_models, tiny_model):
    loras = tmp_path_factory.mktemp("transformer-loras")
    _lora_for(tiny_transformer_models["flux"], loras / "flux_style.safetensors")
    controlnets = tmp_path_factory.mktemp("transformer-controlnets")
    for variant in CONTROLLED:
        write_transformer_controlnet(tiny_transformer_models[variant], variant, controlnets / f"{variant}-edges")
    write_controlnet(controlnets / "sd-edges", tiny_controlnet(tiny_model))
    embeddings = tmp_path_factory.mktemp("transformer-embeddings")
    write_a1111_safetensors(embeddings / "ink-style.safetensors", vectors(2, 32, seed=1))
    # FLUX.1 [schnell] is the default: the LoRA listing's fit is the default model's.
    models = [
        {"name": variant, "path": str(path), "default": variant == "flux"}
        for variant, path in tiny_transformer_models.items()
    ]
    return make_service(
        "transformer-families",
        models=models,
        model={"max_loaded": len(models), "dtype": "float32"},
        defaults={"width": None, "height": None, "num_inference_steps": None},
        loras={"dir": str(loras)},
        controlnet={"dir": str(controlnets)},
        embeddings={"dir": str(embeddings)},
    )


@pytest.fixture(scope="module")
def listed(service):
    with service.client() as client:
        return {model["name"]: model for model in client.get("/api/v1/models").json()["models"]}


def test_each_is_listed_with_its_family_and_defaults(listed):
    assert set(listed) == set(TRANSFORMER_TINY_VARIANTS)
    for variant, model in listed.items():
        assert (model["family"], model["native_size"]) == (FAMILY[variant], [1024, 1024])
        assert model["schedulers"][0] == "FlowMatchEulerDiscreteScheduler"
    assert (listed["flux"]["guidance"], listed["flux"]["default_steps"]) == ("distilled", 4)
    assert (listed["flux-dev"]["guidance"], listed["flux-dev"]["default_guidance_scale"]) == ("embedded", 3.5)
    assert (listed["sd3"]["guidance"], listed["sd3"]["default_steps"]) == ("cfg", 28)
    assert (listed["z-image"]["guidance"], listed["z-image"]["default_steps"]) == ("distilled", 9)
    assert listed["flux2-klein"]["guidance"] == "distilled"
    assert listed["flux-fill"]["inpainting"] and not listed["flux-dev"]["inpainting"]


@pytest.mark.parametrize("variant", TRANSFORMER_TINY_VARIANTS)
def test_the_native_api_serves_every_kind_of_run(service, variant):
    common = {"model": variant, "guidance_scale": GUIDANCE[variant], **SMALL}
    with service.client() as client:
        two = run(client, prompt="a lighthouse", seed=21, num_images=2, **common)
        assert two["status"] == "completed", two
        again = run(client, prompt="a lighthouse", seed=22, **common)
        assert mean_abs_diff(fetch_pixels(two["result_urls"][1]), fetch_pixels(again["result_url"])) <= 1.0
        assert fetch_image(again["result_url"]).size == (64, 64)
        # Image-to-image: the input's size rounded down to the family's multiple of 16.
        source = gradient_image(100, 64)
        changed = run(client, prompt="x", seed=2, init_image=data_url(source), strength=0.7, **common)
        assert changed["status"] == "completed", changed
        assert fetch_image(changed["result_url"]).size == (96, 64)
        # Inpainting: the white square repainted, the rest exactly the original.
        picture = gradient_image(96, 64)
        mask = Image.new("L", (96, 64), 0)
        mask.paste(255, (32, 16, 64, 48))
        edited = run(
            client,
            prompt="a window",
            seed=4,
            init_image=data_url(picture),
            mask_image=data_url(mask),
            mask_blur=0,
            **common,
        )
        assert edited["status"] == "completed", edited
        out, original = fetch_pixels(edited["result_url"]), np.asarray(picture, dtype=np.float64)
        kept = np.asarray(mask) == 0
        assert np.array_equal(out[kept], original[kept])
        assert mean_abs_diff(out[16:48, 32:64], original[16:48, 32:64]) > 1.0


def test_the_flow_schedulers_and_the_refused_ones(service):
    with service.client() as client:
        euler = run(client, prompt="x", seed=1, model="flux", scheduler="EulerDiscreteScheduler", **SMALL)
        assert euler["status"] == "completed", euler
        infotext, record = read_embedded(httpx.get(euler["result_url"]).content)
        assert record is not None and infotext is not None
        assert json.loads(record)["scheduler"] == "FlowMatchEulerDiscreteScheduler"
        assert json.loads(record)["family"] == "FLUX.1"
        parsed = parse_infotext(infotext)
        assert (parsed["Sampler"], parsed["Model family"]) == ("Euler", "FLUX.1")
        assert parsed["Flow scheduler"] == "FlowMatchEulerDiscreteScheduler"
        refused = client.post(
            "/api/v1/generate", json={"prompt": "x", "model": "sd3", "scheduler": "DDIMScheduler", **SMALL}
        )
        assert refused.status_code == 400
        assert "FlowMatchEulerDiscreteScheduler" in refused.json()["detail"]
        assert "UniPCMultistepScheduler" in refused.json()["detail"]
        solver_edit = client.post(
            "/api/v1/generate",
            json={
                "prompt": "x",
                "model": "sd3",
                "scheduler": "UniPCMultistepScheduler",
                "init_image": data_url(gradient_image(64, 64)),
                **SMALL,
            },
        )
        assert solver_edit.status_code == 400 and "只用于文生图" in solver_edit.json()["detail"]
        per_model = client.get("/api/v1/schedulers", params={"model": "z-image"}).json()["schedulers"]
        assert [entry["name"] for entry in per_model] == [
            "FlowMatchEulerDiscreteScheduler",
            "EulerDiscreteScheduler",
            "UniPCMultistepScheduler",
        ]
        assert per_model[0]["a1111_name"] == "Euler"
        everything = client.get("/api/v1/schedulers").json()["schedulers"]
        assert "FlowMatchEulerDiscreteScheduler" not in {entry["name"] for entry in everything}
        unknown = client.get("/api/v1/schedulers", params={"model": "nope"})
        assert unknown.status_code == 404 and "可用模型" in unknown.json()["detail"]


def test_guidance_and_negative_prompt_rules(service):
    with service.client() as client:

        def refused(**body):
            answer = client.post("/api/v1/generate", json={"prompt": "x", **SMALL, **body})
            assert answer.status_code == 400, answer.text
            return answer.json()["detail"]

        assert "guidance_scale" in refused(model="flux", guidance_scale=3.5)  # [schnell]: no guidance
        assert "guidance_scale" in refused(model="z-image", guidance_scale=5.0)  # Turbo
        assert "negative_prompt" in refused(model="flux-dev", negative_prompt="blurry")
        assert "negative_prompt" in refused(model="flux2-klein", negative_prompt="blurry")
        assert "16 的倍数" in refused(model="sd3", width=72)
        control = data_url(gradient_image(64, 64))
        assert "SD 3.x" in refused(model="flux2-klein", controlnets=[{"model": "sd3-edges", "image": control}])
        assert "IP-Adapter" in refused(model="z-image", ip_adapters=[{"model": "any", "image": control}])
        assert "embeddings" in refused(model="sd3", prompt="a boat, ink-style", guidance_scale=5.0)
        # SD 3.x uses classifier-free guidance: a negative prompt changes the picture.
        plain = run(client, prompt="a boat", seed=3, model="sd3", guidance_scale=5.0, **SMALL)
        negative = run(client, prompt="a boat", seed=3, model="sd3", guidance_scale=5.0, negative_prompt="red", **SMALL)
        assert mean_abs_diff(fetch_pixels(plain["result_url"]), fetch_pixels(negative["result_url"])) > 0.5
        # FLUX.1 [dev]'s guidance is embedded: another value, another picture.
        low = run(client, prompt="a boat", seed=3, model="flux-dev", guidance_scale=1.5, **SMALL)
        high = run(client, prompt="a boat", seed=3, model="flux-dev", guidance_scale=6.0, **SMALL)
        assert mean_abs_diff(fetch_pixels(low["result_url"]), fetch_pixels(high["result_url"])) > 0.5
        # The second pass upscales pixels on these families (their latents are packed); klein has no
        # image-to-image pipeline for it.
        second = run(
            client,
            prompt="a boat",
            seed=3,
            model="sd3",
            guidance_scale=5.0,
            hires={"steps": 2, "strength": 0.5, "upscaler": "lanczos", "scale": 2},
            **SMALL,
        )
        assert second["status"] == "completed", second
        assert fetch_image(second["result_url"]).size == (128, 128)
        latent = {"steps": 2, "strength": 0.5, "upscaler": "Latent", "scale": 2}
        assert "Latent" in refused(model="flux", hires=latent)
        assert "hires" in refused(model="flux2-klein", hires={**latent, "upscaler": "lanczos"})
        # Defaults: a request without steps or guidance gets its model's.
        default = run(client, prompt="a boat", seed=3, model="flux", width=64, height=64)
        assert default["status"] == "completed", default
        _, record = read_embedded(httpx.get(default["result_url"]).content)
        assert record is not None
        assert (json.loads(record)["steps"], json.loads(record)["guidance_scale"]) == (4, 0.0)


def test_a_transformer_lora_is_listed_applied_and_refused_where_it_does_not_fit(service):
    with service.client() as client:
        entry = decided_loras(client)["flux_style"]
        assert entry["error"] is None and entry["parts"] == ["transformer"] and entry["type"] == "lora"
        plain = run(client, prompt="x", seed=5, model="flux", **SMALL)
        styled = run(client, prompt="x", seed=5, model="flux", loras=[{"name": "flux_style", "weight": 1.0}], **SMALL)
        assert styled["status"] == "completed", styled
        assert mean_abs_diff(fetch_pixels(plain["result_url"]), fetch_pixels(styled["result_url"])) > 1.0
        after = run(client, prompt="x", seed=5, model="flux", **SMALL)
        assert np.array_equal(fetch_pixels(after["result_url"]), fetch_pixels(plain["result_url"]))
        elsewhere = client.post(
            "/api/v1/generate",
            json={"prompt": "x", "model": "z-image", "loras": [{"name": "flux_style", "weight": 1.0}], **SMALL},
        )
        assert elsewhere.status_code == 400 and "flux_style" in elsewhere.json()["detail"]


@pytest.mark.parametrize("variant", TRANSFORMER_TINY_VARIANTS)
def test_the_openai_sdk_generates_and_edits(service, variant):
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    extra = {"num_inference_steps": 3, "guidance_scale": GUIDANCE[variant], "seed": 8}
    made = client.images.generate(prompt="a red boat", model=variant, n=2, size="64x64", extra_body=extra)
    pictures = [Image.open(io.BytesIO(httpx.get(item.url).content)) for item in made.data]
    assert [picture.size for picture in pictures] == [(64, 64)] * 2
    buffer = io.BytesIO()
    gradient_image(96, 64).save(buffer, format="PNG")
    edited = client.images.edit(
        image=("in.png", buffer.getvalue(), "image/png"),
        prompt="paint it",
        model=variant,
        extra_body={**extra, "strength": 0.6},
    )
    assert Image.open(io.BytesIO(httpx.get(edited.data[0].url).content)).size == (96, 64)
    # Inpainting: OpenAI's mask repaints its transparent pixels; the rest stays exactly the original.
    picture = gradient_image(96, 64)
    mask = Image.new("RGBA", (96, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (32, 16, 64, 48))
    masked = client.images.edit(
        image=("in.png", _png(picture), "image/png"),
        mask=("mask.png", _png(mask), "image/png"),
        prompt="a window",
        model=variant,
        extra_body={**extra, "mask_blur": 0},
    )
    out = np.asarray(Image.open(io.BytesIO(httpx.get(masked.data[0].url).content)).convert("RGB"), dtype=float)
    hole = np.zeros((64, 96), bool)
    hole[16:48, 32:64] = True
    assert np.array_equal(out[~hole], np.asarray(picture, dtype=float)[~hole])
    assert np.abs(out[hole] - np.asarray(picture, dtype=float)[hole]).mean() > 1.0


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("variant", TRANSFORMER_TINY_VARIANTS)
def test_webuiapi_txt2img_and_img2img_with_the_checkpoint_override(service, variant):
    host, port = service.url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), username="anyone", password=API_KEY)
    assert variant in {model["model_name"] for model in api.get_sd_models()}
    # cfg_scale at most 1 for the distilled models (A1111 clients send 7 unless told).
    cfg = min(GUIDANCE[variant], 1.0) if GUIDANCE[variant] <= 1.0 else GUIDANCE[variant]
    override = {"sd_model_checkpoint": variant}
    result = api.txt2img(
        prompt="a harbour",
        seed=5,
        steps=3,
        width=64,
        height=64,
        cfg_scale=cfg,
        sampler_name="Euler",
        override_settings=override,
    )
    assert result.image.size == (64, 64)
    assert "Sampler: Euler" in result.info["infotexts"][0]
    changed = api.img2img(
        images=[gradient_image(64, 64)],
        prompt="repaint",
        seed=3,
        steps=4,
        width=64,
        height=64,
        cfg_scale=cfg,
        sampler_name="Euler",  # webuiapi's default, Euler a, has no flow-matching form: refused
        denoising_strength=0.6,
        override_settings=override,
    )
    assert changed.image.size == (64, 64)
    # Inpainting with A1111's mask (white repaints), no blur: every pixel outside it is the original's.
    picture = gradient_image(64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpainted = api.img2img(
        images=[picture],
        mask_image=mask,
        mask_blur=0,
        inpaint_full_res=False,
        prompt="a window",
        seed=3,
        steps=4,
        width=64,
        height=64,
        cfg_scale=cfg,
        sampler_name="Euler",
        denoising_strength=1.0,
        override_settings=override,
    )
    out, original = np.asarray(inpainted.image.convert("RGB"), dtype=float), np.asarray(picture, dtype=float)
    kept = np.asarray(mask) == 0
    assert np.array_equal(out[kept], original[kept])
    assert np.abs(out[~kept] - original[~kept]).mean() > 1.0


@pytest.mark.parametrize("variant", CONTROLLED)
def test_a_controlnet_of_the_family_guides_text_to_image(service, variant):
    control = data_url(gradient_image(64, 64))
    common = {"model": variant, "prompt": "a house", "seed": 6, "guidance_scale": GUIDANCE[variant], **SMALL}
    with service.client() as client:
        listed = {entry["name"]: entry for entry in client.get("/api/v1/controlnets").json()["controlnets"]}
        assert listed[f"{variant}-edges"]["family"] == FAMILY[variant]
        plain = run(client, **common)
        unit = {"model": f"{variant}-edges", "image": control}
        guided = run(client, controlnets=[unit], **common)
        assert guided["status"] == "completed", guided
        assert mean_abs_diff(fetch_pixels(plain["result_url"]), fetch_pixels(guided["result_url"])) > 1.0
        again = run(client, controlnets=[unit], **common)  # the same unit, the same pixels
        assert np.array_equal(fetch_pixels(again["result_url"]), fetch_pixels(guided["result_url"]))
        off = run(client, controlnets=[{**unit, "weight": 0}], **common)  # weight 0 is "without it"
        assert np.array_equal(fetch_pixels(off["result_url"]), fetch_pixels(plain["result_url"]))

        def refused(**body) -> str:
            answer = client.post("/api/v1/generate", json={**common, **body})
            assert answer.status_code == 400, answer.text
            return answer.json()["detail"]

        assert "SD 1.x" in refused(controlnets=[{"model": "sd-edges", "image": control}])  # another family's
        assert "最多 1 个" in refused(controlnets=[unit, unit])
        assert "只用于文生图" in refused(controlnets=[unit], init_image=control)
        assert "balanced" in refused(controlnets=[{**unit, "control_mode": "prompt"}])
