"""The modules a LoRA file may target in a model on disk, with their weight shapes, read from the model's
safetensors headers and UNet config: no weight is read and no torch is imported, so an API node decides whether a
file fits a model exactly as a worker that loaded it does (engines name the same modules from the loaded model:
sdapi.loras.merging.adapter_targets, and a test holds the two to each other)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from sdapi.errors import ModelLoadFailed
from sdapi.families.detection import detect_folder, safetensors_keys
from sdapi.loras.sgm_names import UnetLayout, sgm_name

# The weight file of each part of a diffusers folder (one file, or shards listed by an index): the denoiser's (UNet
# or transformer), and every text encoder's.
_DENOISER_WEIGHTS = "diffusion_pytorch_model.safetensors"
_TEXT_ENCODER_WEIGHTS = "model.safetensors"


def _part_shapes(folder: Path, file_name: str) -> dict[str, list[int]] | None:
    single = folder / file_name
    if single.is_file():
        return safetensors_keys(single)
    index = folder / (file_name + ".index.json")
    if not index.is_file():
        return None  # .bin weights (or none): cannot be read without unpickling
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    shapes: dict[str, list[int]] = {}
    for shard in shards:
        shapes.update(safetensors_keys(folder / shard))
    return shapes


def disk_targets(model_folder: Path) -> dict[str, tuple[int, ...]] | None:
    """kohya key -> weight shape of every Linear and Conv2d module of the diffusers folder's denoiser and the text
    encoders adapters may change (with the second names its family's files use, as adapter_targets gives them);
    None when the weights cannot be read this way (a single-file checkpoint, .bin weights, an unreadable header)."""
    try:
        family = detect_folder(model_folder).family
        encoders = family.adapter_parts[1:]
        weights = {family.denoiser: _DENOISER_WEIGHTS} | dict.fromkeys(encoders, _TEXT_ENCODER_WEIGHTS)
        parts = {part: _part_shapes(model_folder / part, file_name) for part, file_name in weights.items()}
        denoiser_config = json.loads((model_folder / family.denoiser / "config.json").read_text())
    except (OSError, ValueError, KeyError, struct.error, ModelLoadFailed):
        return None
    if any(shapes is None for shapes in parts.values()):
        return None
    layout = UnetLayout.from_config(denoiser_config) if family.sgm_unet_names else None
    targets: dict[str, tuple[int, ...]] = {}
    for part, shapes in parts.items():
        assert shapes is not None
        for key, shape in shapes.items():
            # Linear weights are 2-D, Conv2d weights 4-D; a text encoder's other 2-D weights are its embeddings.
            text = part != family.denoiser
            if not key.endswith(".weight") or len(shape) not in (2, 4) or (text and ".embeddings." in key):
                continue
            path = key.removesuffix(".weight")
            original = sgm_name(layout, path) if layout is not None and not text else None
            for name in family.kohya_keys(part, path, original):
                targets[name] = tuple(shape)
    return targets
