"""Loading ControlNet models beside a torch pipeline and combining a request's units.

Models load on demand and a few stay loaded (controlnet.cache_size, least recently used out), so swapping units
never reloads the base model. A single .safetensors file is read against the architecture of the base model's UNet
(ControlNetModel.from_unet: a ControlNet is a copy of its UNet's encoder), in diffusers' key layout or, converted by
diffusers' own single-file code, the original one (`control_model.…`).

The units run as one MultiControlNetModel whose residuals are weighted per unit by its control mode, the two modes
AUTOMATIC1111's ControlNet extension has beyond "balanced": "prompt" (My prompt is more important) scales the
residuals down towards the shallow layers, 0.825 per layer; "controlnet" (ControlNet is more important) does the same
and leaves the unconditional half of classifier-free guidance without them, so the prompt's pull weakens beside it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image

from sdapi.core.module_building import MODULES_BUILT_ONE_AT_A_TIME
from sdapi.core.params import GenerationParams
from sdapi.errors import ErrorCode, GenerationFailed
from sdapi.families import Family
from sdapi.families.base import ControlNetSupport

# The folder or file of a resolved ControlNet (name, sha256).
ControlNetFiles = Callable[[str, str], Path]
SOFT_INJECTION = 0.825  # A1111's per-layer factor for the soft control modes


class UnitControlNets(MultiControlNetModel):  # type: ignore[misc]  # diffusers is untyped here
    """The request's ControlNets, each with its control mode; `split_guidance` says whether the batch the pipeline
    passes is [unconditional, conditional] (classifier-free guidance on)."""

    def __init__(self, nets: list[Any], modes: list[str], split_guidance: bool) -> None:
        super().__init__(nets)
        self.modes = modes
        self.split_guidance = split_guidance

    def forward(
        self,
        sample: Any,
        timestep: Any,
        encoder_hidden_states: Any,
        controlnet_cond: Any,
        conditioning_scale: Any,
        **kwargs: Any,
    ) -> Any:
        down_total: list[torch.Tensor] | None = None
        mid_total: torch.Tensor | None = None
        units = zip(controlnet_cond, conditioning_scale, self.nets, self.modes, strict=True)
        for image, scale, net, mode in units:
            down, mid = net(
                sample=sample,
                timestep=timestep,
                encoder_hidden_states=encoder_hidden_states,
                controlnet_cond=image,
                conditioning_scale=scale,
                **kwargs,
            )
            if mode != "balanced":
                # Deepest (the middle block) at full strength, each shallower residual 0.825 times the next.
                layers = len(down)
                down = [residual * SOFT_INJECTION ** (layers - index) for index, residual in enumerate(down)]
                if mode == "controlnet" and self.split_guidance:
                    half = sample.shape[0] // 2
                    down = [torch.cat([torch.zeros_like(r[:half]), r[half:]]) for r in down]
                    mid = torch.cat([torch.zeros_like(mid[:half]), mid[half:]])
            if down_total is None or mid_total is None:
                down_total, mid_total = list(down), mid
            else:
                down_total = [total + residual for total, residual in zip(down_total, down, strict=True)]
                mid_total = mid_total + mid
        return down_total, mid_total


def _embedding_channels(state: dict[str, Any]) -> tuple[int, ...] | None:
    """The conditioning embedding's widths of a diffusers-layout file: conv_in's, then every second block's."""
    if "controlnet_cond_embedding.conv_in.weight" not in state:
        return None
    widths = [int(state["controlnet_cond_embedding.conv_in.weight"].shape[0])]
    index = 1
    while f"controlnet_cond_embedding.blocks.{index}.weight" in state:
        widths.append(int(state[f"controlnet_cond_embedding.blocks.{index}.weight"].shape[0]))
        index += 2
    return tuple(widths)


def _single_file(path: Path, base_unet: Any) -> Any:
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import load_file

    state = load_file(str(path))
    shape: dict[str, Any] = {}
    if (widths := _embedding_channels(state)) is not None:
        shape["conditioning_embedding_out_channels"] = widths
        shape["conditioning_channels"] = int(state["controlnet_cond_embedding.conv_in.weight"].shape[1])
    model = ControlNetModel.from_unet(base_unet, load_weights_from_unet=False, **shape)
    if any(key.startswith("control_model.") for key in state):
        state = convert_controlnet_checkpoint(state, dict(model.config))
    model.load_state_dict(state, strict=True)
    return model


@dataclass(frozen=True)
class ControlRun:
    """A run's ControlNet units and image prompts: the pipeline of the run's kind with them attached, each active
    unit's image (preprocessed, at the output size) with its weight and guidance window, and the image prompts."""

    pipeline: Any
    images: list[Image.Image]
    scales: list[float]
    starts: list[float]
    ends: list[float]
    image_prompts: list[Image.Image] = field(default_factory=list)  # one per IP-Adapter loaded for the run
    # The pipeline's name for a text-to-image run's control images ("image" on SD's, "control_image" on the
    # transformer families'); whether it takes one net's values bare (not lists) and guidance windows.
    text_to_image_key: str = "image"
    one_net: bool = False
    windows: bool = True

    def arguments(
        self, key: str, box: tuple[int, int, int, int] | None = None, size: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """The pipeline's ControlNet arguments, the images under `key` ("image" for text-to-image, "control_image"
        otherwise), cropped to `box` and resized to `size` when a masked-only area renders a crop."""
        arguments: dict[str, Any] = {}
        if self.image_prompts:
            arguments["ip_adapter_image"] = self.image_prompts
        images = self.images
        if not images:
            return arguments
        if box is not None and size is not None:
            images = [image.crop(box).resize(size, Image.Resampling.BILINEAR) for image in images]
        if self.one_net:  # a transformer family's pipeline with one ControlNet takes its values bare
            arguments |= {key: images[0], "controlnet_conditioning_scale": self.scales[0]}
            if self.windows:
                arguments |= {"control_guidance_start": self.starts[0], "control_guidance_end": self.ends[0]}
            return arguments
        return arguments | {
            key: images,
            "controlnet_conditioning_scale": self.scales,
            "control_guidance_start": self.starts,
            "control_guidance_end": self.ends,
        }


class ControlNetModels:
    """The loaded ControlNet models of one engine, by file content."""

    def __init__(self, path_for: ControlNetFiles, cache_size: int, device: str, dtype: Any) -> None:
        self._path_for = path_for
        self._cache_size = cache_size
        self._device = device
        self._dtype = dtype
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, sha256: str, base: Any, support: ControlNetSupport) -> Any:
        """The ControlNet `name` for the model pipeline `base`, loaded as its family's class (a single file read
        against its UNet; a Z-Image ControlNet given the base transformer's shared layers)."""
        with self._lock:
            if sha256 in self._loaded:
                self._loaded.move_to_end(sha256)
                return self._loaded[sha256]
        import diffusers

        model_class = getattr(diffusers, support.model_class)
        path = self._path_for(name, sha256)
        try:
            with MODULES_BUILT_ONE_AT_A_TIME:
                if path.is_dir():
                    model = model_class.from_pretrained(str(path))
                    if support.shares_transformer:
                        model = model_class.from_transformer(model, base.transformer)
                else:
                    model = _single_file(path, base.unet)
        except (OSError, ValueError, RuntimeError, KeyError) as error:  # a file that does not fit the model
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise GenerationFailed(f"ControlNet {name} 无法加载：{first_line}", ErrorCode.INVALID_INPUT) from None
        model.to(self._device, self._dtype)
        model.eval()
        with self._lock:
            self._loaded[sha256] = model
            while len(self._loaded) > self._cache_size:
                self._loaded.popitem(last=False)
        return model


@contextmanager
def applied(
    models: ControlNetModels | None,
    base: Any,
    family: Family,
    params: GenerationParams,
    controls: Sequence[Image.Image],
    image_prompts: Sequence[Image.Image],
) -> Iterator[ControlRun | None]:
    """The request's ControlNet units (their nets from `models`, the engine's) and image prompts for one run: a
    pipeline of the run's kind made from the model's own `base` (so it holds the image encoder the image prompts'
    adapters registered) with the units' nets attached, and each active unit's image, weight and window. None when
    no unit or prompt has a weight: weight 0 is "without it", left out, so the pixels are the plain run's. Nothing
    is left on `base`."""
    units = [(unit, image) for unit, image in zip(params.controlnets, controls, strict=True) if unit.weight > 0]
    prompts = [image for prompt, image in zip(params.ip_adapters, image_prompts, strict=True) if prompt.weight > 0]
    if not units and not prompts:
        yield None
        return
    import diffusers
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    support = family.controlnet or ControlNetSupport()
    attached: dict[str, Any] = {}
    if units:
        if models is None:
            raise GenerationFailed("此引擎未配置 ControlNet（controlnet.dir）", ErrorCode.INVALID_INPUT)
        nets = [models.get(unit.model, unit.sha256, base, support) for unit, _ in units]
        if support.pipeline is not None:  # a transformer family's: one net, its own pipeline (admission held it)
            attached["controlnet"] = nets[0]
        else:
            modes = [unit.control_mode for unit, _ in units]
            attached["controlnet"] = UnitControlNets(nets, modes, params.guidance_scale > 1)
    if units and support.pipeline is not None:
        auto: Any = getattr(diffusers, support.pipeline)
    elif params.inpaint is not None:
        auto = AutoPipelineForInpainting
    elif params.init_image is not None:
        auto = AutoPipelineForImage2Image
    else:
        auto = AutoPipelineForText2Image
    pipeline = auto.from_pipe(base, **attached)
    pipeline.set_progress_bar_config(disable=True)
    yield ControlRun(
        pipeline=pipeline,
        images=[image for _, image in units],
        scales=[unit.weight for unit, _ in units],
        starts=[unit.guidance_start for unit, _ in units],
        ends=[unit.guidance_end for unit, _ in units],
        image_prompts=prompts,
        text_to_image_key="image" if support.pipeline is None else "control_image",
        one_net=support.pipeline is not None,
        windows=support.windows,
    )
