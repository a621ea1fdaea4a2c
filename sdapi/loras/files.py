"""The LoRA / LoHa / LoKr file format (kohya / LyCORIS key layout, or diffusers/PEFT): reading a file, computing
its ΔW, and deciding whether it fits a model. The only module that reads adapter files.

A file holds, per target module, factor tensors under a suffix: `lora_down.weight`/`lora_up.weight`/`alpha` (LoRA),
`hada_w1_a`/`hada_w1_b`/`hada_w2_a`/`hada_w2_b` (+ `hada_t1`/`hada_t2` Tucker) (LoHa), `lokr_w1` | `lokr_w1_a`/`_b`,
`lokr_w2` | `lokr_w2_a`/`_b` (+ `lokr_t2`) (LoKr). Module names are kohya's: `lora_unet_` / `lora_te_` followed by the
diffusers module path with dots turned into underscores. The ΔW formulas are the ones A1111, ComfyUI and InvokeAI
use, so a file means the same here as there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sdapi.families import ADAPTER_PARTS, FAMILIES, TRANSFORMER_FAMILIES, Family, family_of_lora_keys
from sdapi.loras.conversion import needs_conversion, to_peft_layout
from sdapi.loras.names import KOHYA_PREFIXES, kohya_module_key

# kohya's prefix of the (first) text encoder's modules: lora_te_, lora_te1_ share it.
KOHYA_TEXT_PREFIX = KOHYA_PREFIXES["text_encoder"].removesuffix("_")
# The parts that denoise (a UNet, a transformer), whose keys tell a file's part apart from a text encoder's.
_DENOISERS = {family.denoiser for family in FAMILIES}
# The prefixes a kohya-style key may start with (every part of every family, and lora_te1_ / lora_te2_).
_KOHYA_KEY_PREFIXES = ("lora_te", *KOHYA_PREFIXES.values())


_KOHYA_SUFFIXES = {
    "lora_down.weight": "lora",
    "lora_up.weight": "lora",
    "alpha": None,
    "hada_w1_a": "loha",
    "hada_w1_b": "loha",
    "hada_w2_a": "loha",
    "hada_w2_b": "loha",
    "hada_t1": "loha",
    "hada_t2": "loha",
    "lokr_w1": "lokr",
    "lokr_w1_a": "lokr",
    "lokr_w1_b": "lokr",
    "lokr_w2": "lokr",
    "lokr_w2_a": "lokr",
    "lokr_w2_b": "lokr",
    "lokr_t2": "lokr",
}
# diffusers/PEFT layout: unet.<module path>.lora_A.weight / lora_B.weight (optionally .alpha).
_PEFT_KEY = re.compile(
    rf"^(?:base_model\.model\.)?({'|'.join(ADAPTER_PARTS)})\.(.+)\.(lora_A\.weight|lora_B\.weight|alpha)$"
)


class AdapterFileError(ValueError):
    """The file cannot be used: unknown keys, missing factors, non-finite values, a module the model lacks...

    Messages are Chinese first (they reach clients in 400s and the LoRA list), with the technical term kept in
    parentheses for the operator who searches logs and docs for it.
    """


def read_adapter_file(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file (CPU); raise AdapterFileError for a corrupt or non-finite file."""
    try:
        tensors: dict[str, torch.Tensor] = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterFileError(f"文件无法读取（cannot read file: {type(error).__name__}: {error}）") from None
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise AdapterFileError(f"张量 {key} 含有 NaN 或无穷大的值")
    if needs_conversion(tensors):
        # A transformer family's file in its trainer's layout: diffusers' converters make it PEFT keys.
        converted = to_peft_layout(tensors)
        if converted is None:
            raise AdapterFileError("文件是扩散 Transformer 的 LoRA，但其键的格式无法转换（diffusers 的转换器均不接受）")
        return converted
    return tensors


@dataclass
class ModuleFactors:
    """The tensors of one target module, by suffix."""

    kind: str  # lora | loha | lokr
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def part_of(module_key: str) -> str:
    """The part (unet, transformer, text_encoder) a module key names."""
    return next(
        (part for part, prefix in KOHYA_PREFIXES.items() if part in _DENOISERS and module_key.startswith(prefix)),
        "text_encoder",
    )


def made_for(modules: Mapping[str, ModuleFactors]) -> Family | None:
    """The family a file was made for: by its module names (sdapi.families), and where they are alike by the width
    of its text-encoder modules (the in-features of a text attention query's down factor); None for a transformer
    family's file (their module names overlap: whether it fits a model is told by its modules' shapes)."""
    width = next(
        (
            int(factors.tensors["lora_down.weight"].shape[-1])
            for key, factors in modules.items()
            if key.startswith(KOHYA_TEXT_PREFIX) and key.endswith("q_proj") and "lora_down.weight" in factors.tensors
        ),
        None,
    )
    return family_of_lora_keys(modules, width)


def group_factors(tensors: Mapping[str, torch.Tensor]) -> dict[str, ModuleFactors]:
    """Group a file's tensors by target module (in kohya naming); raise AdapterFileError on unknown keys."""
    modules: dict[str, ModuleFactors] = {}
    unknown: list[str] = []
    for key, tensor in tensors.items():
        peft = _PEFT_KEY.match(key)
        if peft is not None:
            module_key = kohya_module_key(peft[1], peft[2])
            suffix = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}.get(peft[3], peft[3])
            kind: str | None = "lora" if suffix != "alpha" else None
        else:
            module_key, _, suffix = key.partition(".")
            if suffix not in _KOHYA_SUFFIXES or not module_key.startswith(_KOHYA_KEY_PREFIXES):
                unknown.append(key)
                continue
            kind = _KOHYA_SUFFIXES[suffix]
        entry = modules.setdefault(module_key, ModuleFactors(kind=kind or ""))
        if kind is not None:
            if entry.kind and entry.kind != kind:
                raise AdapterFileError(f"模块 {module_key} 混用了 {entry.kind} 和 {kind} 的因子")
            entry.kind = kind
        entry.tensors[suffix] = tensor
    if unknown:
        shown = ", ".join(sorted(unknown)[:3])
        more = " …" if len(unknown) > 3 else ""
        raise AdapterFileError(f"文件含有无法识别的键（unknown keys，{len(unknown)} 个）：{shown}{more}")
    for module_key, entry in modules.items():
        if not entry.kind:
            raise AdapterFileError(f"模块 {module_key} 只有 alpha，没有因子")
    return modules


def _needed(module_key: str, factors: ModuleFactors, *names: str) -> list[torch.Tensor]:
    missing = [name for name in names if name not in factors.tensors]
    if missing:
        raise AdapterFileError(f"模块 {module_key} 缺少 {', '.join(missing)}")
    return [factors.tensors[name].float() for name in names]


def _alpha(factors: ModuleFactors) -> float | None:
    alpha = factors.tensors.get("alpha")
    return None if alpha is None else float(alpha.float().reshape(-1)[0])


def compute_delta(module_key: str, factors: ModuleFactors, weight_shape: torch.Size) -> torch.Tensor:
    """ΔW (fp32, shaped like the module's weight) at adapter weight 1.0; raise AdapterFileError."""
    if factors.kind == "lora":
        down, up = _needed(module_key, factors, "lora_down.weight", "lora_up.weight")
        alpha = _alpha(factors)
        scale = 1.0 if alpha is None else alpha / down.shape[0]
        delta = up.flatten(1) @ down.flatten(1)
    elif factors.kind == "loha":
        w1a, w1b, w2a, w2b = _needed(module_key, factors, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        alpha = _alpha(factors)
        scale = 1.0 if alpha is None else alpha / w1b.shape[0]
        if "hada_t1" in factors.tensors and "hada_t2" in factors.tensors:
            # Tucker-decomposed convolution (LyCORIS "cp"): the factors rebuild each half with its core tensor.
            t1, t2 = _needed(module_key, factors, "hada_t1", "hada_t2")
            delta = torch.einsum("i j k l, j r, i p -> p r k l", t1, w1b, w1a) * torch.einsum(
                "i j k l, j r, i p -> p r k l", t2, w2b, w2a
            )
        else:
            delta = (w1a @ w1b) * (w2a @ w2b)
    elif factors.kind == "lokr":
        tensors = factors.tensors
        rank: int | None = None
        if "lokr_w1" in tensors:
            (w1,) = _needed(module_key, factors, "lokr_w1")
        else:
            w1a, w1b = _needed(module_key, factors, "lokr_w1_a", "lokr_w1_b")
            rank, w1 = w1b.shape[0], w1a @ w1b
        if "lokr_w2" in tensors:
            (w2,) = _needed(module_key, factors, "lokr_w2")
        elif "lokr_t2" in tensors:
            t2, w2a, w2b = _needed(module_key, factors, "lokr_t2", "lokr_w2_a", "lokr_w2_b")
            rank, w2 = w2b.shape[0], torch.einsum("i j k l, j r, i p -> p r k l", t2, w2b, w2a)
        else:
            w2a, w2b = _needed(module_key, factors, "lokr_w2_a", "lokr_w2_b")
            rank, w2 = w2b.shape[0], w2a @ w2b
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        alpha = _alpha(factors)
        # As LyCORIS: alpha/rank applies only when a factor is low-rank; full Kronecker factors are used as is.
        scale = alpha / rank if alpha is not None and rank is not None else 1.0
        delta = torch.kron(w1, w2)
    else:
        raise AdapterFileError(f"模块 {module_key}：未知的适配器类型 {factors.kind!r}")
    if delta.numel() != weight_shape.numel():
        raise AdapterFileError(
            f"模块 {module_key}：ΔW 形状（shape）{tuple(delta.shape)} 与模型权重 {tuple(weight_shape)} 不符"
        )
    return (delta * scale).reshape(weight_shape)


def file_kind(modules: Mapping[str, ModuleFactors]) -> str:
    """lora | loha | lokr: the kind most of the file's modules use."""
    kinds = [factors.kind for factors in modules.values()]
    return max(set(kinds), key=kinds.count) if kinds else "lora"


def deltas_for_model(
    modules: Mapping[str, ModuleFactors], module_shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """ΔW at weight 1.0 (fp32, CPU) for every module of a file, shaped for the model; raise AdapterFileError when
    the file does not fit the model (made for another family, a module the model lacks, a shape that differs)."""
    model = family_of_lora_keys(module_shapes, None)  # a model's targets carry its family's second names
    made = made_for(modules)
    missing = [name for name in modules if name not in module_shapes]
    named_apart = made is not None and model is not None and made.sgm_unet_names
    if _group(made) != _group(model) and (named_apart or missing):
        detail = f"（{len(missing)} 个模块不在模型中，例如 {missing[0]}）" if missing else "（按其模块名判断）"
        raise AdapterFileError(f"为 {_group_label(made)} 制作，当前模型为 {_group_label(model)}{detail}")
    if missing:
        raise AdapterFileError(f"{len(missing)} 个模块不在模型中（not in the model），例如 {missing[0]}")
    return {key: compute_delta(key, factors, torch.Size(module_shapes[key])) for key, factors in modules.items()}


# A transformer family's file or model, where its family is not named (their module names overlap).
_TRANSFORMER_GROUP = "扩散 Transformer 模型（" + "、".join(f.label for f in TRANSFORMER_FAMILIES) + "）"


def _group(family: Family | None) -> str:
    return family.addon_group if family is not None else _TRANSFORMER_GROUP


def _group_label(family: Family | None) -> str:
    return family.addon_group_label if family is not None else _TRANSFORMER_GROUP


def check_fits(path: Path, module_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise AdapterFileError unless the file at `path` can be merged into a model with these module shapes.

    The one fit check: the library scan, the exporter and the adapter manager all decide through it.
    """
    deltas_for_model(group_factors(read_adapter_file(path)), module_shapes)
