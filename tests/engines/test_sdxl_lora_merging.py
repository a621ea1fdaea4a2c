"""SDXL LoRAs in kohya's SDXL layout (original UNet block names, lora_te1_/lora_te2_) and in the diffusers/PEFT
layout, checked against independent computations: diffusers' own SGM mapping and SDXL LoRA loader, and ΔW from the
published formulas in both text encoders and the UNet."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers
from safetensors.torch import load_file, save_file

from sdapi.config import ModelConfig
from sdapi.core.request import LoraSpec
from sdapi.engines import Run
from sdapi.engines.torch_engine import TorchEngine
from tests.support.adapter_files import RANK, expected_delta
from tests.support.factories import make_params
from tests.support.services import mean_abs_diff

PARAMS = {"prompt": "a castle", "width": 64, "height": 64, "num_inference_steps": 3, "seed": 42}


def test_the_original_block_names_are_the_ones_diffusers_maps(tiny_sdxl, sdxl_loras):
    """Our names for SDXL's UNet modules, checked against diffusers' own SGM-to-diffusers mapping."""
    tensors = load_file(str(sdxl_loras / "xl_lora.safetensors"))
    unet_keys = {key: value for key, value in tensors.items() if key.startswith("lora_unet_")}
    assert any("input_blocks" in key for key in unet_keys) and any("output_blocks" in key for key in unet_keys)
    engine = engine_for(tiny_sdxl, sdxl_loras / "xl_lora.safetensors")
    config = engine._text_to_image.unet.config
    mapped = _maybe_map_sgm_blocks_to_diffusers(dict(unet_keys), config)
    targets = engine.adapters._targets
    assert len(mapped) == len(unet_keys)
    by_tensor = {id(tensor): key for key, tensor in unet_keys.items()}
    # diffusers renumbers the blocks here and renames input/middle/output to down/mid/up in a later step.
    renames = (
        ("_input_blocks_", "_down_blocks_"),
        ("_middle_block_", "_mid_block_"),
        ("_output_blocks_", "_up_blocks_"),
    )
    for renumbered, tensor in mapped.items():
        original = by_tensor[id(tensor)]
        module_key = renumbered.split(".", 1)[0]
        for old, new in renames:
            module_key = module_key.replace(old, new)
        assert targets[module_key] is targets[original.split(".", 1)[0]], (original, renumbered)


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr"])
def test_each_kind_merges_delta_w_into_both_text_encoders_and_the_unet(tiny_sdxl, sdxl_loras, kind):
    path = sdxl_loras / f"xl_{kind}.safetensors"
    tensors = load_file(str(path))
    engine = engine_for(tiny_sdxl, path)
    targets = engine.adapters._targets
    keys = [
        next(k for k in targets if k.startswith("lora_unet_input_blocks_") and k.endswith("attn2_to_k")),
        next(k for k in targets if k.startswith("lora_unet_output_blocks_") and k.endswith("attn1_to_q")),
        "lora_te1_text_model_encoder_layers_1_self_attn_q_proj",
        "lora_te2_text_model_encoder_layers_0_self_attn_v_proj",
    ]
    for module_key in keys:
        weight = targets[module_key].weight
        before = weight.detach().clone()
        engine.adapters.activate([spec_for(path, 0.7)])
        applied = (weight.detach() - before).double().numpy()
        expected = 0.7 * expected_delta(tensors, module_key, kind, tuple(weight.shape))
        assert np.abs(expected).max() > 1e-3, module_key  # the file does touch this module
        assert np.abs(applied - expected).max() < 1e-5 * max(1.0, np.abs(expected).max()), module_key
        engine.adapters.restore()
        assert torch.equal(weight, before)


def spec_for(path, weight=1.0):
    return LoraSpec(name=path.stem, weight=weight, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def engine_for(model, path):
    engine = TorchEngine(ModelConfig(path=str(model), device="cpu", dtype="float32"), lambda _: path, 4)
    engine.load()
    return engine


def test_a_kohya_sdxl_lora_matches_diffusers_own_loader(tiny_sdxl, sdxl_loras):
    # The UNet part: diffusers 0.38's loader drops kohya's text-encoder keys of this layout with a warning, so the
    # text encoders are checked against the ΔW formulas below instead.
    path = sdxl_loras / "xl_unet_lora.safetensors"
    ours = engine_for(tiny_sdxl, path)
    params = make_params(**PARAMS, loras=(spec_for(path, 0.7),))
    served = np.asarray(ours.generate(Run(params)).images[0], dtype=np.float64)
    base = np.asarray(ours.generate(Run(make_params(**PARAMS))).images[0], dtype=np.float64)
    reference = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, torch_dtype=torch.float32, add_watermarker=False)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(sdxl_loras), weight_name=path.name)
    reference.fuse_lora(lora_scale=0.7)
    expected = reference(
        prompt="a castle",
        width=64,
        height=64,
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(42),
    ).images[0]
    assert mean_abs_diff(served, np.asarray(expected, dtype=np.float64)) <= 1.0
    assert mean_abs_diff(served, base) > 1.0  # the LoRA does change the picture


def test_the_peft_layout_with_text_encoder_2_means_the_same(tiny_sdxl, sdxl_loras, tmp_path):
    kohya = load_file(str(sdxl_loras / "xl_lora.safetensors"))
    engine = engine_for(tiny_sdxl, sdxl_loras / "xl_lora.safetensors")
    pipeline = engine._text_to_image
    paths = {}  # kohya module key -> "part.module.path" in the diffusers/PEFT layout
    for part, root in (("unet", pipeline.unet), ("text_encoder", pipeline.text_encoder)):
        for name, module in root.named_modules():
            for key, target in engine.adapters._targets.items():
                if target is module:
                    paths.setdefault(key, f"{part}.{name}")
    for name, _module in pipeline.text_encoder_2.named_modules():
        paths[f"lora_te2_{name.replace('.', '_')}"] = f"text_encoder_2.{name}"
    peft = {}
    for key, tensor in kohya.items():
        module_key, _, suffix = key.partition(".")
        if suffix == "alpha":
            continue
        name = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}[suffix]
        alpha = float(kohya[f"{module_key}.alpha"])
        peft[f"{paths[module_key]}.{name}"] = (
            tensor * (alpha / RANK) if name == "lora_B.weight" else tensor
        ).contiguous()
    save_file(peft, str(tmp_path / "xl_peft.safetensors"))
    as_kohya = np.asarray(
        engine.generate(Run(make_params(**PARAMS, loras=(spec_for(sdxl_loras / "xl_lora.safetensors"),)))).images[0],
        dtype=np.float64,
    )
    peft_engine = engine_for(tiny_sdxl, tmp_path / "xl_peft.safetensors")
    as_peft = np.asarray(
        peft_engine.generate(Run(make_params(**PARAMS, loras=(spec_for(tmp_path / "xl_peft.safetensors"),)))).images[0],
        dtype=np.float64,
    )
    assert mean_abs_diff(as_kohya, as_peft) < 0.01
