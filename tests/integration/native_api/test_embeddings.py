"""Textual-inversion embeddings over HTTP: the library listing (native and A1111), a prompt naming one, checked
against diffusers' own load_textual_inversion on the same inputs, and what cannot be used refused with a 400."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from tests.support.embedding_files import (
    vectors,
    write_a1111_pt,
    write_a1111_safetensors,
    write_broken,
    write_diffusers,
    write_sdxl,
)
from tests.support.services import fetch_image, fetch_pixels, generate, mean_abs_diff

WIDTH = 32  # the tiny models' text encoders
BODY = {"width": 64, "height": 64, "num_inference_steps": 3, "guidance_scale": 7.5, "seed": 42}


@pytest.fixture(scope="module")
def embedding_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeddings")
    write_a1111_pt(folder / "painter-style.pt", vectors(1, WIDTH, seed=1))
    write_a1111_safetensors(folder / "gloomy.safetensors", vectors(3, WIDTH, seed=2))
    write_diffusers(folder / "cat-toy.safetensors", vectors(1, WIDTH, seed=3))
    write_a1111_safetensors(folder / "sd15-wide.safetensors", vectors(2, 768, seed=4))
    write_sdxl(folder / "xl-style.safetensors", vectors(2, WIDTH, seed=5), vectors(2, WIDTH, seed=6))
    return folder, write_broken(folder)


@pytest.fixture(scope="module")
def embedding_client(make_service, embedding_dir):
    running = make_service("embedding-service", embeddings={"dir": str(embedding_dir[0])}, model={"dtype": "float32"})
    with running.client() as client:
        yield client


def _run(client, prompt, **body):
    result = generate(client, prompt=prompt, **(BODY | body))
    assert result["status"] == "completed", result
    return result, fetch_pixels(result["result_url"])


def _reference(model_dir, prompt, embeddings, negative_prompt=None, sdxl=False):
    """The picture diffusers itself makes with the embeddings loaded by load_textual_inversion (file, token)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if sdxl:
        pipeline = StableDiffusionXLPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    else:
        pipeline = StableDiffusionPipeline.from_pretrained(model_dir, torch_dtype=torch.float32, safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    for token, source in embeddings.items():
        if sdxl:
            from safetensors.torch import load_file

            state = load_file(str(source))
            pipeline.load_textual_inversion(
                state["clip_l"], token=token, text_encoder=pipeline.text_encoder, tokenizer=pipeline.tokenizer
            )
            pipeline.load_textual_inversion(
                state["clip_g"], token=token, text_encoder=pipeline.text_encoder_2, tokenizer=pipeline.tokenizer_2
            )
        else:
            pipeline.load_textual_inversion(str(source), token=token)
    image = pipeline(
        prompt=prompt,
        negative_prompt=negative_prompt,
        width=64,
        height=64,
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(42),
    ).images[0]
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def test_the_library_lists_every_file_with_what_it_is(embedding_client, embedding_dir):
    folder, broken = embedding_dir
    entries = {entry["name"]: entry for entry in embedding_client.get("/api/v1/embeddings").json()["embeddings"]}
    assert set(entries) == {"painter-style", "gloomy", "cat-toy", "sd15-wide", "xl-style", *broken}
    for name, count in (("painter-style", 1), ("gloomy", 3), ("cat-toy", 1)):
        entry = entries[name]
        assert entry["vectors"] == count and entry["widths"] == [WIDTH], entry
        assert entry["fits"] is True and entry["error"] is None, entry
    data = (folder / "painter-style.pt").read_bytes()
    assert entries["painter-style"]["sha256"] == hashlib.sha256(data).hexdigest()[:12]
    assert entries["painter-style"]["size_bytes"] == len(data)
    assert entries["sd15-wide"]["family"] == "sd1" and entries["sd15-wide"]["fits"] is False
    assert "768" in entries["sd15-wide"]["error"]
    assert entries["xl-style"]["widths"] == [WIDTH, WIDTH] and entries["xl-style"]["fits"] is False
    for name, reason in broken.items():
        assert entries[name]["fits"] is False and reason in entries[name]["error"], entries[name]


def test_the_a1111_listing_splits_loaded_and_skipped(embedding_client):
    listing = embedding_client.get("/sdapi/v1/embeddings").json()
    assert set(listing["loaded"]) == {"painter-style", "gloomy", "cat-toy"}
    assert listing["loaded"]["gloomy"] == {
        "step": None,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
        "shape": WIDTH,
        "vectors": 3,
    }
    assert {"sd15-wide", "xl-style", "corrupt_embedding"} <= set(listing["skipped"])


@pytest.mark.parametrize(
    "name, suffix", [("painter-style", "pt"), ("gloomy", "safetensors"), ("cat-toy", "safetensors")]
)
def test_a_named_embedding_changes_the_picture_as_diffusers_loads_it(
    embedding_client, embedding_dir, tiny_model, name, suffix
):
    folder, _ = embedding_dir
    _, plain = _run(embedding_client, "a castle by someone")
    result, named = _run(embedding_client, f"a castle by {name.upper()}")  # names match in any case
    assert result["embeddings"] == [name]
    assert mean_abs_diff(plain, named) > 1.0
    expected = _reference(tiny_model, f"a castle by {name}", {name: folder / f"{name}.{suffix}"})
    assert np.abs(named - expected).max() <= 1.0  # within 1/255


def test_embeddings_in_the_negative_prompt_and_several_at_once(embedding_client, embedding_dir, tiny_model):
    folder, _ = embedding_dir
    result, served = _run(embedding_client, "a castle, painter-style", negative_prompt="gloomy, blurry")
    assert result["embeddings"] == ["gloomy", "painter-style"]
    expected = _reference(
        tiny_model,
        "a castle, painter-style",
        {"painter-style": folder / "painter-style.pt", "gloomy": folder / "gloomy.safetensors"},
        negative_prompt="gloomy, blurry",
    )
    assert np.abs(served - expected).max() <= 1.0
    # The engine keeps what it loaded: the plain prompt afterwards is the plain prompt's picture.
    _, first = _run(embedding_client, "a castle at noon")
    _, again = _run(embedding_client, "a castle at noon")
    assert np.array_equal(first, again)


def test_a_name_inside_a_longer_word_is_not_the_embedding(embedding_client):
    result, _ = _run(embedding_client, "a gloomyish castle with cat-toys")
    assert result["embeddings"] == []


def test_the_image_records_the_embeddings_hashes(embedding_client, embedding_dir):
    folder, _ = embedding_dir
    result, _ = _run(embedding_client, "a castle by painter-style")
    parameters = fetch_image(result["result_url"]).text["parameters"]
    sha = hashlib.sha256((folder / "painter-style.pt").read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "painter-style: {sha}"' in parameters


@pytest.mark.parametrize("name", ["sd15-wide", "xl-style", "corrupt_embedding"])
def test_an_embedding_that_cannot_be_used_is_a_400_naming_it(embedding_client, name):
    response = embedding_client.post("/api/v1/generate", json={"prompt": f"a castle by {name}"})
    assert response.status_code == 400, response.text
    assert name in response.json()["detail"]


def test_an_sdxl_embedding_fills_both_text_encoders(make_service, embedding_dir, tiny_sdxl):
    folder, _ = embedding_dir
    running = make_service("embedding-sdxl", tiny_sdxl, embeddings={"dir": str(folder)}, model={"dtype": "float32"})
    with running.client() as client:
        result, served = _run(client, "a castle, xl-style")
        assert result["embeddings"] == ["xl-style"]
        _, plain = _run(client, "a castle, someone")
        refused = client.post("/api/v1/generate", json={"prompt": "a castle, painter-style"})
    assert mean_abs_diff(served, plain) > 1.0
    expected = _reference(tiny_sdxl, "a castle, xl-style", {"xl-style": folder / "xl-style.safetensors"}, sdxl=True)
    assert np.abs(served - expected).max() <= 1.0
    assert refused.status_code == 400 and "painter-style" in refused.json()["detail"]
