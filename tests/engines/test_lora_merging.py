"""LoRA, LoHa and LoKr merged into the torch engine's modules: the change equals ΔW from the file, and prepared
sets are cached and bounded."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdapi.config import ModelConfig
from sdapi.core.request import LoraSpec
from sdapi.engines.torch_engine import TorchEngine
from tests.support.adapter_files import (
    expected_delta,
)


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr"])
def test_the_applied_change_equals_delta_w_from_the_file(tiny_model, lora_dir, kind):
    path = lora_dir / f"style_{kind}.safetensors"
    tensors = load_file(str(path))
    spec = LoraSpec(name=path.stem, weight=0.7, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    engine = TorchEngine(ModelConfig(path=str(tiny_model), device="cpu", dtype="float32"), lambda _: path, 4)
    engine.load()
    targets = engine.adapters._targets
    for module_key in (
        "lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_attn2_to_k",
        "lora_te_text_model_encoder_layers_1_self_attn_q_proj",
    ):
        weight = targets[module_key].weight
        before = weight.detach().clone()
        engine.adapters.activate([spec])
        applied = (weight.detach() - before).double().numpy()
        expected = 0.7 * expected_delta(tensors, module_key, kind, tuple(weight.shape))
        assert np.abs(applied - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())
        assert np.abs(expected).max() > 1e-3  # the check is not vacuous
        engine.adapters.restore()
        assert torch.equal(weight, before)  # restored exactly


def test_prepared_adapters_are_cached_and_bounded(tiny_model, lora_dir):
    paths = {name: lora_dir / f"{name}.safetensors" for name in ("style_lora", "style_loha", "style_lokr")}
    specs = {name: LoraSpec(name, 1.0, hashlib.sha256(p.read_bytes()).hexdigest()) for name, p in paths.items()}
    loads = []

    def path_for(spec):
        loads.append(spec.name)
        return paths[spec.name]

    engine = TorchEngine(ModelConfig(path=str(tiny_model), device="cpu", dtype="float32"), path_for, 2)
    engine.load()
    for name in ("style_lora", "style_loha", "style_lora", "style_loha", "style_lokr", "style_lora"):
        engine.adapters.activate([specs[name]])
    # style_lora and style_loha were read once each; style_lokr evicted style_lora (LRU of 2), read again after.
    assert loads == ["style_lora", "style_loha", "style_lokr", "style_lora"]
    assert len(engine.adapters._deltas) == 2
