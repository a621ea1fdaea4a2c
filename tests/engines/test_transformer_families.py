"""The transformer families (SD 3.x, FLUX.1 [schnell] and [dev], FLUX.2 [klein], Z-Image) on the torch engine, on
their tiny models: every kind of run their pipelines offer (text-to-image, image-to-image, inpainting), the seed
rule, cross-request batches whose members keep their own pixels, the flow-matching schedulers, and a LoRA in
diffusers' PEFT layout equal to an independent merge of the same weights into the transformer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdapi.config import ModelConfig
from sdapi.core.params import InitImageInfo, InpaintParams
from sdapi.core.request import LoraSpec
from sdapi.engines import Run
from sdapi.engines.torch_engine import TorchEngine
from sdapi.errors import InvalidParameter
from sdapi.families.detection import detect_folder
from sdapi.previews.drawing import draw_current
from sdapi.previews.latent_rgb import map_of
from tests.fixtures.models import TRANSFORMER_TINY_VARIANTS
from tests.support.factories import make_params
from tests.support.services import mean_abs_diff

SIDE = 64


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


@pytest.fixture(scope="module", params=TRANSFORMER_TINY_VARIANTS)
def engine(request, tiny_transformer_models):
    path = tiny_transformer_models[request.param]
    loaded = TorchEngine(ModelConfig(path=str(path), device="cpu", dtype="float32"))
    loaded.load()
    return request.param, path, loaded


def _params(engine: TorchEngine, **changes):
    """A small run with the model's own defaults for guidance (a distilled model takes none)."""
    assert engine.family is not None
    fields = {
        "width": SIDE,
        "height": SIDE,
        "num_inference_steps": 3,
        "guidance_scale": engine.family.run_defaults.guidance_scale,
    }
    return make_params(**(fields | changes))


def test_every_kind_of_run_and_the_seed_rule(engine):
    _, path, loaded = engine
    assert detect_folder(path).family is loaded.family.family
    two = loaded.generate(Run(_params(loaded, seed=11, num_images=2)))
    assert [image.size for image in two.images] == [(SIDE, SIDE)] * 2
    assert two.facts.scheduler == "FlowMatchEulerDiscreteScheduler"
    second = loaded.generate(Run(_params(loaded, seed=12)))
    assert mean_abs_diff(_pixels(two.images[1]), _pixels(second.images[0])) <= 1.0  # image k = seed + k
    assert mean_abs_diff(_pixels(two.images[0]), _pixels(two.images[1])) > 1.0
    # Image-to-image: the init image's size, changed by the denoising.
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (SIDE, SIDE * 2, 3), dtype=np.uint8))
    info = InitImageInfo(SIDE * 2, SIDE, "png")
    changed = loaded.generate(
        Run(_params(loaded, width=SIDE * 2, init_image=info, strength=0.7, num_inference_steps=4), init)
    )
    assert changed.images[0].size == (SIDE * 2, SIDE)
    assert mean_abs_diff(_pixels(changed.images[0]), _pixels(init)) > 1.0
    # Inpainting: the masked square repainted, every pixel the (unblurred) mask keeps exactly the original's.
    edit = init.convert("RGBA")
    mask = Image.new("L", init.size, 0)
    mask.paste(255, (16, 16, 48, 48))
    edit.putalpha(mask)
    inpaint = InpaintParams(masked=True, blur=0)
    repainted = loaded.generate(
        Run(_params(loaded, width=SIDE * 2, init_image=info, inpaint=inpaint, num_inference_steps=4), edit)
    )
    out = _pixels(repainted.images[0])
    kept = np.asarray(mask) == 0
    assert np.array_equal(out[kept], _pixels(init)[kept])
    assert mean_abs_diff(out[16:48, 16:48], _pixels(init)[16:48, 16:48]) > 1.0


@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "UniPCMultistepScheduler"])
def test_the_flow_schedulers_run_and_are_recorded(engine, scheduler):
    _, _, loaded = engine
    assert loaded.family is not None
    params = _params(loaded, scheduler=scheduler, num_inference_steps=4)
    if scheduler in loaded.family.family.text_to_image_only_schedulers and loaded.family.inpainting:
        with pytest.raises(InvalidParameter, match="只用于文生图"):  # every run of FLUX.1 Fill is a repaint
            loaded.family.check(params)
        return
    loaded.family.check(params)
    result = loaded.generate(Run(params))
    ran = "FlowMatchEulerDiscreteScheduler" if scheduler == "EulerDiscreteScheduler" else scheduler
    assert result.facts.scheduler == ran
    assert result.images[0].size == (SIDE, SIDE)


def test_cross_request_batch_members_keep_their_pixels(engine):
    _, _, loaded = engine
    own = [{"prompt": "a red ball", "seed": 1}, {"prompt": "snow at night", "seed": 7, "num_images": 2}]
    members = [Run(_params(loaded, **mine), on_step=lambda *_: None) for mine in own]
    alone = [loaded.generate(member).images for member in members]
    batched = loaded.generate_batch(members)
    for expected, got in zip(alone, batched, strict=True):
        assert got is not None and len(got.images) == len(expected)
        for a, b in zip(expected, got.images, strict=True):
            assert mean_abs_diff(_pixels(a), _pixels(b)) <= 1.0


def _peft_lora(transformer: torch.nn.Module, path, rank: int = 4) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A LoRA in diffusers' PEFT layout on the transformer's first attention projections (random factors, large
    enough to show); returns module path -> (down, up)."""
    generator = torch.Generator().manual_seed(5)
    chosen = [
        (name, module)
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear) and name.endswith(("to_q", "to_k", "to_v", "to_out.0"))
    ][:6]
    assert chosen, "the transformer has attention projections"
    factors, tensors = {}, {}
    for name, module in chosen:
        down = torch.randn(rank, module.in_features, generator=generator) * 0.5
        up = torch.randn(module.out_features, rank, generator=generator) * 0.5
        factors[name] = (down, up)
        tensors[f"transformer.{name}.lora_A.weight"] = down
        tensors[f"transformer.{name}.lora_B.weight"] = up
    save_file(tensors, str(path))
    return factors


def test_a_lora_equals_an_independent_merge_and_leaves_nothing_behind(engine, tmp_path):
    variant, path, loaded = engine
    lora_path = tmp_path / f"{variant}-style.safetensors"
    factors = _peft_lora(loaded._text_to_image.transformer, lora_path)
    with_lora = TorchEngine(
        ModelConfig(path=str(path), device="cpu", dtype="float32"), lora_files=lambda spec: lora_path
    )
    with_lora.load()
    params = _params(with_lora, seed=3, num_inference_steps=3)
    plain = with_lora.generate(Run(params)).images[0]
    spec = LoraSpec(name="style", weight=0.8, sha256="0" * 64)
    merged_run = with_lora.generate(Run(_params(with_lora, seed=3, num_inference_steps=3, loras=(spec,)))).images[0]
    zero = LoraSpec(name="style", weight=0.0, sha256="1" * 64)
    at_zero = with_lora.generate(Run(_params(with_lora, seed=3, num_inference_steps=3, loras=(zero,)))).images[0]
    after = with_lora.generate(Run(params)).images[0]
    # An independent merge: W + 0.8 * up @ down on a fresh load, nothing of sdapi's LoRA code involved.
    independent = TorchEngine(ModelConfig(path=str(path), device="cpu", dtype="float32"))
    independent.load()
    modules = dict(independent._text_to_image.transformer.named_modules())
    with torch.no_grad():
        for name, (down, up) in factors.items():
            modules[name].weight += 0.8 * (up @ down)
    expected = independent.generate(Run(params)).images[0]
    assert mean_abs_diff(_pixels(merged_run), _pixels(expected)) <= 1.0
    assert mean_abs_diff(_pixels(merged_run), _pixels(plain)) > 1.0  # the LoRA did something
    assert np.array_equal(_pixels(at_zero), _pixels(plain))  # weight 0 is no LoRA
    assert np.array_equal(_pixels(after), _pixels(plain))  # nothing stayed behind


def test_a_kohya_z_image_lora_matches_diffusers_own_loader(tiny_transformer_models, tmp_path):
    """A transformer LoRA in kohya's layout (lora_unet_<module>, alpha), converted by diffusers' converter, merged by
    sdapi: the same picture as diffusers' own load_lora_weights + fuse_lora at the same weight."""
    from diffusers import ZImagePipeline

    path = tiny_transformer_models["z-image"]
    generator = torch.Generator().manual_seed(2)
    tensors = {}
    for name in ("layers_0_attention_to_q", "layers_0_attention_to_v", "layers_1_attention_to_out_0"):
        tensors[f"lora_unet_{name}.lora_down.weight"] = torch.randn(4, 32, generator=generator) * 0.5
        tensors[f"lora_unet_{name}.lora_up.weight"] = torch.randn(32, 4, generator=generator) * 0.5
        tensors[f"lora_unet_{name}.alpha"] = torch.tensor(2.0)
    lora_path = tmp_path / "kohya_z.safetensors"
    save_file(tensors, str(lora_path))
    engine = TorchEngine(ModelConfig(path=str(path), device="cpu", dtype="float32"), lora_files=lambda spec: lora_path)
    engine.load()
    assert engine.family is not None and engine.family.family.name == "z-image"
    spec = LoraSpec(name="kohya_z", weight=0.7, sha256="2" * 64)
    params = _params(engine, seed=9, num_inference_steps=3, loras=(spec,))
    ours = engine.generate(Run(params)).images[0]
    reference = ZImagePipeline.from_pretrained(str(path))
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(lora_path), adapter_name="kohya_z")
    reference.fuse_lora(lora_scale=0.7)
    theirs = reference(
        prompt=params.prompt,
        width=SIDE,
        height=SIDE,
        num_inference_steps=3,
        guidance_scale=params.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(9),
    ).images[0]
    plain = engine.generate(Run(_params(engine, seed=9, num_inference_steps=3))).images[0]
    assert mean_abs_diff(_pixels(ours), _pixels(theirs)) <= 1.0
    assert mean_abs_diff(_pixels(ours), _pixels(plain)) > 1.0


def test_models_with_the_same_text_encoders_load_them_once(tiny_transformer_models, tiny_model, tmp_path):
    """Two FLUX.1 models whose encoders are the same files (copied here: the same content) share the modules; a
    UNet family's, whose LoRAs and embeddings change its text encoders, never share."""
    import shutil

    def loaded(path):
        engine = TorchEngine(ModelConfig(path=str(path), device="cpu", dtype="float32"))
        engine.load()
        return engine

    first = loaded(tiny_transformer_models["flux"])
    copy = shutil.copytree(tiny_transformer_models["flux"], tmp_path / "flux-copy")
    second = loaded(copy)
    for part in ("text_encoder", "text_encoder_2"):
        assert getattr(second._text_to_image, part) is getattr(first._text_to_image, part), part
    assert second._text_to_image.transformer is not first._text_to_image.transformer
    params = _params(second, seed=4)
    assert np.array_equal(
        _pixels(first.generate(Run(params)).images[0]), _pixels(second.generate(Run(params)).images[0])
    )
    sd_first, sd_second = loaded(tiny_model), loaded(shutil.copytree(tiny_model, tmp_path / "sd-copy"))
    assert sd_second._text_to_image.text_encoder is not sd_first._text_to_image.text_encoder


def test_sd3_without_its_t5_encoder(tiny_transformer_models):
    """models[].text_encoder_3: false loads SD 3.x without T5-XXL (less memory): it still runs, and its pictures
    differ from the full model's (the T5 part of the text is zeros)."""
    path = tiny_transformer_models["sd3"]
    without = TorchEngine(ModelConfig(path=str(path), device="cpu", dtype="float32", text_encoder_3=False))
    without.load()
    assert without._text_to_image.text_encoder_3 is None and without._text_to_image.tokenizer_3 is None
    full = TorchEngine(ModelConfig(path=str(path), device="cpu", dtype="float32"))
    full.load()
    params = _params(full, seed=2, guidance_scale=5.0)
    lighter = without.generate(Run(params)).images[0]
    assert lighter.size == (SIDE, SIDE)
    assert mean_abs_diff(_pixels(lighter), _pixels(full.generate(Run(params)).images[0])) > 1.0


def test_live_previews_are_drawn_from_the_unpacked_latents(engine):
    """sdapi.previews on a family whose pipelines pack their latents (FLUX.1, FLUX.2) or not (SD 3.x, Z-Image): a
    preview of the picture's size at every step, drawn from the family's latent grid, which is the pipeline's own
    packing undone. (A tiny model's random VAE is far from linear, so how much a preview looks like the final image
    is measured on the trained default model: tests/integration/previews.)"""
    _, _, loaded = engine
    drawn: list[Image.Image] = []

    def on_step(step: int, total: int, images_done: int) -> None:
        picture = draw_current(256)
        assert picture is not None
        drawn.append(picture)

    loaded.generate(Run(_params(loaded, seed=5, num_inference_steps=4), on_step=on_step))
    assert len(drawn) == 4 and all(picture.size == (SIDE, SIDE) for picture in drawn)
    assert len({picture.tobytes() for picture in drawn}) > 1  # the picture moves as the steps go
    pipeline = loaded._pipelines().text_to_image
    family = loaded.family.family
    channels = map_of(pipeline).channels  # the grid the map was fitted on: what spatial_latents must give back
    if family.name == "flux":  # 2x2 cells of the 8x grid packed into tokens
        grid = torch.randn(1, channels, SIDE // 8, SIDE // 8)
        packed = pipeline._pack_latents(grid, 1, channels, SIDE // 8, SIDE // 8)
        assert torch.equal(family.spatial_latents(pipeline, packed, (SIDE, SIDE)), grid)
    elif family.name == "flux2-klein":  # the patchified 16x grid's cells as tokens
        grid = torch.randn(1, channels, SIDE // 16, SIDE // 16)
        packed = pipeline._pack_latents(grid)
        assert torch.equal(family.spatial_latents(pipeline, packed, (SIDE, SIDE)), grid)
    else:
        grid = torch.randn(1, channels, SIDE // 8, SIDE // 8)
        assert family.spatial_latents(pipeline, grid, (SIDE, SIDE)) is grid
