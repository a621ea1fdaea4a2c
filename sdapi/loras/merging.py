"""Applying a set of LoRA/LoHa/LoKr files to the loaded torch modules: merge ΔW in, restore exactly.

Merging (rather than injecting adapter layers) keeps generation at the base model's speed and is the same code the
ONNX export uses to bake LoRAs in. The original tensors of every touched module are kept, so restoring is a copy:
bit-identical to a fresh load. Prepared ΔW per file are kept in a bounded LRU, so repeating a set is cheap.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from sdapi.core.request import LoraSpec
from sdapi.errors import ErrorCode, GenerationFailed
from sdapi.families import Family
from sdapi.loras.files import AdapterFileError, deltas_for_model, group_factors, read_adapter_file
from sdapi.loras.sgm_names import UnetLayout, sgm_name
from sdapi.observability import metrics

logger = logging.getLogger(__name__)

ADAPTABLE = (torch.nn.Linear, torch.nn.Conv2d)


def adapter_targets(family: Family, modules: Mapping[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """Every module a kohya-layout file can name, by its kohya keys, among `modules` (part -> root module, as
    family.adapter_modules gives them). A family whose files also use second names (the UNet's original block
    names, a second text-encoder prefix) reaches a module by each: it then has two keys."""
    targets: dict[str, torch.nn.Module] = {}
    layout = UnetLayout.from_config(modules["unet"].config) if family.sgm_unet_names else None
    for part, root in modules.items():
        for path, module in root.named_modules():
            if not isinstance(module, ADAPTABLE):
                continue
            original = sgm_name(layout, path) if layout is not None and part == "unet" else None
            for key in family.kohya_keys(part, path, original):
                targets[key] = module
    return targets


def target_shapes(targets: Mapping[str, torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """kohya key -> weight shape: what a file is checked against (loras.files.check_fits)."""
    return {key: tuple(module.weight.shape) for key, module in targets.items()}


class AdapterManager:
    """Keeps the modules merged with exactly one set of adapters (possibly none) at a time."""

    def __init__(
        self, targets: Mapping[str, torch.nn.Module], path_for: Callable[[LoraSpec], Path], cache_size: int
    ) -> None:
        self._targets = targets
        self._shapes = target_shapes(targets)
        # One name per module: an SDXL module has two keys (diffusers and original names), and two files naming it
        # differently must still add up on the one weight, saved and restored once.
        first_key: dict[int, str] = {}
        self._canonical = {key: first_key.setdefault(id(module), key) for key, module in targets.items()}
        self._path_for = path_for
        self._cache_size = cache_size
        self._deltas: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()  # by file sha256
        self._originals: dict[str, torch.Tensor] = {}
        self._active: tuple[tuple[str, float], ...] = ()

    def activate(self, specs: Sequence[LoraSpec]) -> None:
        """Make the modules carry exactly `specs` (restoring the base first when the set changes)."""
        wanted = tuple((spec.sha256, spec.weight) for spec in specs)
        if wanted == self._active:
            return
        with torch.no_grad():
            self.restore()
            totals: dict[str, torch.Tensor] = {}
            for spec in specs:
                for name, delta in self._prepared(spec).items():
                    key = self._canonical[name]
                    scaled = delta.float() * spec.weight
                    totals[key] = totals[key] + scaled if key in totals else scaled
            for key, total in totals.items():
                weight = self._targets[key].weight
                self._originals[key] = weight.detach().clone()
                weight.copy_((weight.float() + total.to(weight.device)).to(weight.dtype))
        self._active = wanted

    @contextmanager
    def applied(self, specs: Sequence[LoraSpec]) -> Iterator[None]:
        """The modules carrying exactly `specs` for one run. The merge outlives the run on purpose: a next run of the
        same set pays nothing, and any run naming another set (none included) gets the base restored first, bit for
        bit (the originals are kept), so what a run sees never depends on the run before."""
        self.activate(specs)
        yield

    def restore(self) -> None:
        """Put back the original tensors of every touched module."""
        with torch.no_grad():
            for key, original in self._originals.items():
                self._targets[key].weight.copy_(original)
        self._originals.clear()
        self._active = ()

    def _prepared(self, spec: LoraSpec) -> dict[str, torch.Tensor]:
        """ΔW per module at weight 1.0, from the LRU cache or computed from the file."""
        cached = self._deltas.get(spec.sha256)
        if cached is not None:
            metrics.LORA_CACHE.labels(result="hit").inc()
            self._deltas.move_to_end(spec.sha256)
            return cached
        metrics.LORA_CACHE.labels(result="miss").inc()
        try:
            computed = deltas_for_model(group_factors(read_adapter_file(self._path_for(spec))), self._shapes)
        except AdapterFileError as error:
            raise GenerationFailed(f"LoRA {spec.name} 无法应用：{error}", ErrorCode.INVALID_INPUT) from None
        deltas = {}
        for key, delta in computed.items():
            weight = self._targets[key].weight
            deltas[key] = delta.to(weight.device, weight.dtype)
        self._deltas[spec.sha256] = deltas
        while len(self._deltas) > self._cache_size:
            self._deltas.popitem(last=False)
        return deltas
