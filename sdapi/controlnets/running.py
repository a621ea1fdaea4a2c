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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

from sdapi.errors import ErrorCode, GenerationFailed

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


class ControlNetModels:
    """The loaded ControlNet models of one engine, by file content."""

    def __init__(self, path_for: ControlNetFiles, cache_size: int, device: str, dtype: Any) -> None:
        self._path_for = path_for
        self._cache_size = cache_size
        self._device = device
        self._dtype = dtype
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, sha256: str, base_unet: Any) -> Any:
        with self._lock:
            if sha256 in self._loaded:
                self._loaded.move_to_end(sha256)
                return self._loaded[sha256]
        from diffusers import ControlNetModel

        path = self._path_for(name, sha256)
        try:
            model = ControlNetModel.from_pretrained(str(path)) if path.is_dir() else _single_file(path, base_unet)
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
