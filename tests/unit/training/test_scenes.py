"""The training data of the default model: scenes drawn deterministically, captions that name what is drawn, a
tokenizer that keeps every caption word whole, and a scorer whose reading of rendered scenes is the ceiling the
adherence benchmark compares the model with."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from transformers import CLIPTokenizer

from sdapi.models.default_model import ManifestMismatch, install_default_model, verify
from training import scene_stats, scenes
from training.word_tokenizer import write_word_tokenizer


def test_the_same_scene_and_seed_draw_the_same_pixels_and_another_seed_does_not():
    scene = scenes.Landscape("sunset", "snowy", 2, "lake", "grass", "few", True)
    first, again, other = (scenes.render(scene, 128, seed) for seed in (5, 5, 6))
    assert first.size == (128, 128)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


def test_pixel_statistics_tell_the_attributes_apart_on_rendered_scenes():
    def picture(**changes):
        base = {
            "time": "day",
            "mountains": "green",
            "ranges": 2,
            "water": "lake",
            "ground": "grass",
            "trees": "none",
            "clouds": False,
        }
        return scenes.render(scenes.Landscape(**{**base, **changes}), 256, 3)

    assert scene_stats.sky_luminance(picture(time="night")) < scene_stats.sky_luminance(picture(time="day")) - 0.3
    assert scene_stats.white_share(picture(mountains="snowy")) > scene_stats.white_share(picture()) + 0.03
    grey = picture().convert("L").convert("RGB")
    assert scene_stats.saturation(grey) < 0.01 < scene_stats.saturation(picture())


def test_captions_name_only_what_the_scene_has():
    rng = random.Random(1)
    for _ in range(300):
        scene = scenes.random_scene(rng, object_share=0.0)
        text = scenes.caption(scene, rng)
        if scene.water == "none":
            assert not any(word in text for word in ("lake", "sea", "ocean", "water"))
        if scene.mountains == "none":
            text = text.replace("a mountain lake", "a lake")  # the name of a kind of lake, mountains or not
            assert "mountain" not in text and "peaks" not in text and "hills" not in text
        if scene.time != "night":
            assert "night" not in text and "moon" not in text


def test_shapes_are_captioned_with_their_colour_except_orange_which_has_no_word():
    rng = random.Random(2)
    for _ in range(200):
        scene = scenes.random_scene(rng, object_share=1.0)
        thing = scenes.caption(scene, rng).split(" on a ")[0]  # "... on a white background" names the background
        assert scene.shape in thing
        if scene.colour in scenes.UNNAMED_COLOURS:
            assert not any(colour in thing for colour in scenes.COLOURS), thing
        else:
            assert scene.colour in thing
    assert "orange" not in scenes.vocabulary()


def test_the_orange_share_counts_the_orange_circle_and_no_other_shape():
    def circle(colour, background="black"):
        return scenes.render(scenes.ShapeScene(colour, "circle", background), 128, 4)

    assert scene_stats.orange_share(circle("orange")) > 0.1
    assert scene_stats.orange_share(circle("orange", "gray")) > 0.1
    for colour in scenes.COLOURS:
        if colour != "orange":
            assert scene_stats.orange_share(circle(colour)) == 0.0, colour


def test_a_rendered_shape_reads_back_as_its_own_colour():
    for colour in scenes.COLOURS:
        for background in scenes.BACKGROUNDS:
            picture = scenes.render(scenes.ShapeScene(colour, "square", background), 128, 5)
            assert scene_stats.nearest_colour(scene_stats.shape_colour(picture), list(scenes.COLOURS)) == colour


def test_every_caption_word_is_one_token_and_unknown_words_fall_back_to_characters(tmp_path):
    write_word_tokenizer(tmp_path, scenes.vocabulary())
    tokenizer = CLIPTokenizer(vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt"))
    for word in scenes.vocabulary():
        if any(character.isdigit() for character in word):
            continue  # CLIP's pre-tokenizer splits digits one by one ("4k": "4", "k"), before any merge
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert tokenizer.decode(tokenizer("a giraffe", add_special_tokens=False).input_ids) == "a giraffe"
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert vocab["<|endoftext|>"] == max(vocab.values())  # CLIP pools at the highest id


def test_the_scorer_reads_time_of_day_water_and_ground_from_rendered_scenes():
    scorer = scene_stats.calibrated_scorer(count=400, size=128)
    rng = random.Random(99)
    hits = {attribute: [] for attribute in ("time", "water", "ground")}
    for _ in range(80):
        scene = scenes.random_scene(rng, object_share=0.0)
        predicted = scorer.predict(scenes.render(scene, 128, rng.randrange(1000)))
        for attribute, values in hits.items():
            values.append(predicted[attribute] == getattr(scene, attribute))
    for attribute, values in hits.items():
        assert np.mean(values) > 0.85, attribute


def test_installing_checks_every_sum_and_names_the_file_that_differs(tmp_path):
    repo = tmp_path / "repo"
    (repo / "models" / "m" / "unet").mkdir(parents=True)
    (repo / "models" / "m" / "unet" / "w.safetensors").write_bytes(b"weights")
    (repo / "models" / "m" / "model_index.json").write_text("{}")
    from sdapi.models.default_model import sha256_of

    files = {f"models/m/{p}": sha256_of(repo / "models" / "m" / p) for p in ("unet/w.safetensors", "model_index.json")}
    manifest = repo / "models" / "m.manifest.json"
    manifest.write_text(json.dumps({"files": files}))
    installed = install_default_model(tmp_path / "data" / "m", repo / "models" / "m", manifest)
    assert (installed / "unet" / "w.safetensors").read_bytes() == b"weights"
    (repo / "models" / "m" / "unet" / "w.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1")
    with pytest.raises(ManifestMismatch, match=r"unet/w\.safetensors"):
        verify(manifest)
