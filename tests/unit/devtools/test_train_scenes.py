"""The training script of the default model runs every stage end to end (`--quick`: tiny budgets, useless
weights) and writes a pipeline the service's loader reads, a kohya LoRA for its UNet and an embedding."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sdapi.devtools import train_scenes
from sdapi.loras.names import kohya_module_key

pytestmark = pytest.mark.slow


def test_quick_training_writes_a_loadable_pipeline_lora_and_embedding(tmp_path):
    out, loras, embeddings = tmp_path / "model", tmp_path / "loras", tmp_path / "embeddings"
    arguments = ["--quick", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    arguments += ["--loras-dir", str(loras), "--embeddings-dir", str(embeddings)]
    assert train_scenes.main(arguments) == 0
    pipeline = train_scenes.load_pipeline(out)
    image = pipeline("a lake at sunset", num_inference_steps=2, width=64, height=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3)
    assert pipeline.unet.dtype == torch.float32  # shipped in fp16, loaded as the service asks
    lora = load_file(str(loras / f"{train_scenes.LORA_NAME}.safetensors"))
    kohya_names = {kohya_module_key("unet", name) for name, _ in pipeline.unet.named_modules() if name}
    assert lora and {key.split(".", 1)[0] for key in lora} <= kohya_names
    embedding = load_file(str(embeddings / f"{train_scenes.EMBEDDING_NAME}.safetensors"))
    assert embedding["emb_params"].shape == (1, pipeline.text_encoder.config.hidden_size)
