"""The training script of the default model runs every stage end to end (`--quick`: tiny budgets, useless
weights) and writes a pipeline the service's loader reads, a kohya LoRA for its UNet and an embedding."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sdapi.loras.names import kohya_module_key
from training import train_scenes

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
    # The decoder stage retunes the decoder only: the encoder that wrote the UNet's latents is the VAE stage's.
    trained = load_file(str(tmp_path / "work" / "vae" / "diffusion_pytorch_model.safetensors"))
    tuned = load_file(str(tmp_path / "work" / "vae_decoder" / "diffusion_pytorch_model.safetensors"))
    assert trained.keys() == tuned.keys()
    decoder = {name for name in trained if name.startswith(("decoder.", "post_quant_conv."))}
    assert all(torch.equal(trained[name], tuned[name]) for name in trained.keys() - decoder)
    assert any(not torch.equal(trained[name], tuned[name]) for name in decoder)


def test_text_examples_ask_each_scene_only_what_it_has():
    import random

    texts, classes = train_scenes._text_examples(random.Random(5), 400)
    assert len(texts) == 400 and all(len(values) == 400 for values in classes.values())
    kinds = train_scenes._TEXT_TARGETS["kind"][1]
    for index, text in enumerate(texts):
        kind = kinds[classes["kind"][index]]
        for name, (applies_to, _) in train_scenes._TEXT_TARGETS.items():
            asked = classes[name][index] != -100
            assert asked == (applies_to in ("any", kind)), (name, text)
        style = train_scenes._TEXT_TARGETS["style"][1][classes["style"][index]]
        assert (style == train_scenes.TRIGGER) == (train_scenes.TRIGGER in text.split(", "))
    # Empty captions stand for the unconditional prompt (classifier-free guidance), about one in ten.
    assert 20 <= texts.count("") <= 70


def test_a_named_attribute_is_the_class_the_encoder_is_taught():
    import random

    texts, classes = train_scenes._text_examples(random.Random(6), 600)
    nights = [i for i, text in enumerate(texts) if "at night" in text or "starry night" in text]
    assert nights, "some captions name the night"
    night = train_scenes._TEXT_TARGETS["time"][1].index("night")
    assert all(classes["time"][i] == night for i in nights)
