"""LoRA / LoHa / LoKr files for the tiny model, in the exact kohya / LyCORIS key layout (and one PEFT file).

Module names are mapped from the diffusers UNet and CLIP text encoder the way kohya's sd-scripts names them:
`lora_unet_` / `lora_te_` + the module path with dots replaced by underscores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

RANK = 4


def model_modules(model_dir: Path) -> dict[str, torch.nn.Module]:
    """kohya key -> module, for every Linear/Conv2d of the tiny model's UNet and text encoder."""
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder")
    modules = {}
    for prefix, root in (("lora_unet_", unet), ("lora_te_", text_encoder)):
        for path, module in root.named_modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                modules[prefix + path.replace(".", "_")] = module
    return modules


def sdxl_modules(model_dir: Path) -> dict[str, torch.nn.Module]:
    """kohya key -> module for an SDXL model, named as kohya-ss writes SDXL files: the UNet's original block names
    (lora_unet_input_blocks_4_1_...), lora_te1_ and lora_te2_ for the two text encoders."""
    from transformers import CLIPTextModelWithProjection

    from sdapi.loras.sgm_names import UnetLayout, sgm_name

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    modules = {}
    for path, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and (
            original := sgm_name(UnetLayout.from_config(unet.config), path)
        ):
            modules["lora_unet_" + original.replace(".", "_")] = module
    encoders = (
        ("lora_te1_", CLIPTextModel.from_pretrained(model_dir / "text_encoder")),
        ("lora_te2_", CLIPTextModelWithProjection.from_pretrained(model_dir / "text_encoder_2")),
    )
    for prefix, root in encoders:
        for path, module in root.named_modules():
            if isinstance(module, torch.nn.Linear):
                modules[prefix + path.replace(".", "_")] = module
    return modules


def pick_targets(modules: dict[str, torch.nn.Module], parts: tuple[str, ...], convs: bool) -> list[str]:
    """Attention projections (and, with `convs`, the resnet 3x3 convolutions) of the chosen parts."""
    chosen = []
    for key, module in modules.items():
        in_unet = key.startswith("lora_unet_")
        if (in_unet and "unet" not in parts) or (not in_unet and "text_encoder" not in parts):
            continue
        attention = any(name in key for name in ("to_q", "to_k", "to_v", "to_out_0", "q_proj", "v_proj", "fc1"))
        conv = convs and isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3) and "resnets" in key
        if attention or conv:
            chosen.append(key)
    return chosen


def _lora(module: torch.nn.Module, generator: torch.Generator, scale: float) -> dict[str, torch.Tensor]:
    weight = module.weight
    out_features, in_features = weight.shape[0], weight.shape[1]
    if weight.dim() == 4:
        kh, kw = weight.shape[2:]
        down = torch.randn(RANK, in_features, kh, kw, generator=generator) * scale
        up = torch.randn(out_features, RANK, 1, 1, generator=generator) * scale
    else:
        down = torch.randn(RANK, in_features, generator=generator) * scale
        up = torch.randn(out_features, RANK, generator=generator) * scale
    return {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(float(RANK) / 2)}


def _loha(module: torch.nn.Module, generator: torch.Generator, scale: float) -> dict[str, torch.Tensor]:
    weight = module.weight
    out_features = weight.shape[0]
    if weight.dim() == 4:
        # Tucker-decomposed convolution (LyCORIS "cp"): w*_a is (rank, out), w*_b is (rank, in).
        in_features, kh, kw = weight.shape[1:]
        tensors = {}
        for half in ("1", "2"):
            tensors[f"hada_t{half}"] = torch.randn(RANK, RANK, kh, kw, generator=generator) * scale
            tensors[f"hada_w{half}_a"] = torch.randn(RANK, out_features, generator=generator) * scale
            tensors[f"hada_w{half}_b"] = torch.randn(RANK, in_features, generator=generator) * scale
    else:
        in_features = weight.shape[1]
        tensors = {}
        for half in ("1", "2"):
            tensors[f"hada_w{half}_a"] = torch.randn(out_features, RANK, generator=generator) * scale
            tensors[f"hada_w{half}_b"] = torch.randn(RANK, in_features, generator=generator) * scale
    tensors["alpha"] = torch.tensor(float(RANK))
    return tensors


def _lokr(module: torch.nn.Module, generator: torch.Generator, scale: float) -> dict[str, torch.Tensor]:
    weight = module.weight
    out_features, in_features = weight.shape[0], weight.shape[1]
    a, b = 4 if out_features % 4 == 0 else 1, 2 if in_features % 2 == 0 else 1
    tensors = {"lokr_w1": torch.randn(a, b, generator=generator) * scale}
    if weight.dim() == 4:
        tensors["lokr_w2"] = (
            torch.randn(out_features // a, in_features // b, *weight.shape[2:], generator=generator) * scale
        )
    else:
        tensors["lokr_w2_a"] = torch.randn(out_features // a, RANK, generator=generator) * scale
        tensors["lokr_w2_b"] = torch.randn(RANK, in_features // b, generator=generator) * scale
        tensors["alpha"] = torch.tensor(float(RANK))
    return tensors


MAKERS = {"lora": _lora, "loha": _loha, "lokr": _lokr}


def write_adapter(
    path: Path,
    modules: dict[str, torch.nn.Module],
    kind: str,
    parts: tuple[str, ...] = ("unet", "text_encoder"),
    seed: int = 0,
    scale: float = 0.3,
    convs: bool = True,
) -> dict[str, torch.Tensor]:
    """Write a kohya-layout file of `kind` for the tiny model; return its tensors."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key in pick_targets(modules, parts, convs):
        for suffix, tensor in MAKERS[kind](modules[key], generator, scale).items():
            tensors[f"{key}.{suffix}"] = tensor.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return tensors


def write_peft_copy(kohya: dict[str, torch.Tensor], path: Path, unet_paths: dict[str, str]) -> None:
    """The same LoRA in the diffusers/PEFT layout: unet.<path>.lora_A.weight / lora_B.weight (alpha = rank)."""
    tensors = {}
    for key, tensor in kohya.items():
        module_key, _, suffix = key.partition(".")
        if module_key not in unet_paths or suffix == "alpha":
            continue
        name = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}[suffix]
        # PEFT files carry no alpha: scale 1. Fold kohya's alpha/rank into B so both files mean the same.
        alpha = float(kohya[f"{module_key}.alpha"])
        value = tensor * (alpha / RANK) if name == "lora_B.weight" else tensor
        tensors[f"unet.{unet_paths[module_key]}.{name}"] = value.contiguous()
    save_file(tensors, str(path))


def write_sdxl_style(path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    key = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    save_file(
        {
            f"{key}.lora_down.weight": torch.randn(4, 640, generator=generator),
            f"{key}.lora_up.weight": torch.randn(640, 4, generator=generator),
            f"{key}.alpha": torch.tensor(4.0),
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 768),
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(768, 4),
        },
        str(path),
    )


def write_wrong_shapes(path: Path, modules: dict[str, torch.nn.Module]) -> None:
    """A LoRA whose module names exist in the model but whose factors are for a wider model."""
    key = next(k for k in modules if k.endswith("to_q") and k.startswith("lora_unet_"))
    out_features, in_features = modules[key].weight.shape
    save_file(
        {
            f"{key}.lora_down.weight": torch.zeros(4, in_features * 2),
            f"{key}.lora_up.weight": torch.zeros(out_features * 2, 4),
        },
        str(path),
    )


def expected_delta(tensors: dict[str, torch.Tensor], module_key: str, kind: str, shape: tuple[int, ...]) -> Any:
    """ΔW straight from the file's tensors with numpy, following the published formulas (the tests' oracle)."""
    t: dict[str, Any] = {
        k.split(".", 1)[1]: v.double().numpy() for k, v in tensors.items() if k.startswith(module_key + ".")
    }
    if kind == "lora":
        rank = t["lora_down.weight"].shape[0]
        delta = t["lora_up.weight"].reshape(shape[0], rank) @ t["lora_down.weight"].reshape(rank, -1)
        return delta.reshape(shape) * float(t["alpha"]) / rank
    if kind == "loha":
        rank = t["hada_w1_b"].shape[0]
        delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        return delta.reshape(shape) * float(t["alpha"]) / rank
    w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
    return np.kron(t["lokr_w1"], w2).reshape(shape) * float(t["alpha"]) / t["lokr_w2_b"].shape[0]
