"""What a model family is: data plus a little code (the way diffusers' AutoPipeline mappings and a pipeline's
`_optional_components` are), so the rest of sdapi asks the family instead of testing a flag. One module per family
(sd1.py, sd2.py, sdxl.py) fills it in; the registry (families/__init__.py) lists them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdapi.core.schedulers import ACCEPTED_SCHEDULERS


@dataclass(frozen=True)
class Family:
    """One model family."""

    # The one name every surface uses (/api/v1/models, the add-on lists, export manifests): sd1, sd2, sdxl.
    name: str
    label: str  # for people: "SD 1.x"
    # Add-ons (LoRAs, ControlNets, IP-Adapters) made for one family of a group run on every family of it: SD 1.x
    # and 2.x share their UNet layout (their text widths tell them apart where it matters).
    addon_group: str
    addon_group_label: str
    # The side a model is trained at when its UNet config does not say (sample_size x 8 does).
    native_side: int
    # diffusers' pipeline classes, by the name model_index.json gives: what detection claims, and what loads.
    text_to_image: str
    inpainting: str
    # optimum.onnxruntime's pipeline classes for an export: text-to-image, image-to-image, inpainting.
    onnx_pipelines: tuple[str, str, str]
    # Keyword arguments its pipelines load with (the safety checker off, the watermarker off).
    load_options: Mapping[str, object]
    # Its text encoders and tokenizers, as the pipeline names them, first first.
    text_encoders: tuple[str, ...]
    tokenizers: tuple[str, ...]
    # transformers' classes of those text encoders (what an export's configs are read back into).
    text_encoder_classes: tuple[str, ...]
    # kohya's key prefix for each part's modules in LoRA files, and the second prefixes its files may also use.
    kohya_prefixes: Mapping[str, str]
    kohya_aliases: Mapping[str, str] = field(default_factory=dict)
    # Whether kohya's files for it also name UNet modules by their original (SGM/LDM) block names.
    sgm_unet_names: bool = False
    # Whether its pipelines take size micro-conditioning (original_size, target_size, crops_coords_top_left).
    size_conditioning: bool = False
    # The widths of its text encoders' token embeddings (a textual-inversion file's vectors must have them).
    embedding_widths: tuple[int, ...] = ()
    # The schedulers its requests may name (the model's own config runs when they name none).
    schedulers: tuple[str, ...] = ACCEPTED_SCHEDULERS
    # The ONNX models an export of it holds.
    onnx_parts: tuple[str, ...] = ("text_encoder", "unet", "vae_encoder", "vae_decoder")

    def addon_mismatch(self, made_for: Family | None) -> str | None:
        """Why an add-on made for the family `made_for` cannot run on a model of this family (None: it may, or what
        it was made for is not known). Add-ons of one group run on every family of it."""
        if made_for is None or made_for.addon_group == self.addon_group:
            return None
        return f"为 {made_for.addon_group_label} 制作，所选模型为 {self.label}"

    def adapter_modules(self, pipeline: Any) -> dict[str, Any]:
        """The modules of a loaded pipeline that adapters (LoRA, LoHa, LoKr) may change, by part: its UNet and its
        text encoders."""
        return {"unet": pipeline.unet, **{name: getattr(pipeline, name) for name in self.text_encoders}}

    def kohya_keys(self, part: str, module_path: str, sgm_path: str | None) -> list[str]:
        """Every key kohya's files name one module by: its part's prefix with the diffusers path (dots to
        underscores), then any second name its files use (the UNet's original block name `sgm_path`, a second
        prefix for the part)."""
        keys = [self.kohya_prefixes[part] + module_path.replace(".", "_")]
        if part == "unet" and self.sgm_unet_names and sgm_path is not None:
            keys.append(self.kohya_prefixes["unet"] + sgm_path.replace(".", "_"))
        if part in self.kohya_aliases:
            keys.append(self.kohya_aliases[part] + module_path.replace(".", "_"))
        return keys

    def size_arguments(self, size: tuple[int, int]) -> dict[str, object]:
        """Its micro-conditioning for a picture of `size` (width, height): an uncropped picture made at the size
        asked for (the output's size, also for image-to-image), which is what such a family's training associates
        with whole, well-framed images. Nothing for families without it."""
        if not self.size_conditioning:
            return {}
        height_width = (size[1], size[0])
        return {"original_size": height_width, "target_size": height_width, "crops_coords_top_left": (0, 0)}


@dataclass(frozen=True)
class ModelFamily:
    """A model as detected: its family, the size it was trained at (width, height: the default when neither the
    request nor the config gives one), its prediction type (epsilon or v_prediction; None when only loading the
    model can tell, as for a single file), and whether it is an inpainting checkpoint (a UNet that also takes the
    mask and the masked image's latents: 9 input channels)."""

    family: Family
    native_size: tuple[int, int]
    prediction: str | None = None
    inpainting: bool = False

    @property
    def pipeline_class(self) -> str:
        """The diffusers pipeline class its checkpoint loads as."""
        return self.family.inpainting if self.inpainting else self.family.text_to_image
