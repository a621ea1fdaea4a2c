"""Speed levers over HTTP (issue 48) on the trained default model: its shipped tiny decoder draws what its prompt
says (measured with training.scene_stats, as the full decoder's picture is), DeepCache and token merging change the
picture and leave nothing behind, each is recorded, /api/v1/models says which levers each model runs, a lever a
model cannot run is a 400 naming it, a config default is left out where a model cannot run it, and A1111's names
(sd_vae_decode_method, token_merging_ratio) work through the real `webuiapi` client."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import webuiapi

from sdapi.media.provenance import read_embedded
from tests.support.services import API_KEY, REPO_ROOT, fetch_image, fetch_pixels, generate, mean_abs_diff
from training import scene_stats

MODEL = REPO_ROOT / "models" / "scenes-sd"
BODY = {"prompt": "a lake and green mountains at noon", "width": 256, "height": 256, "num_inference_steps": 12}
# Where the model draws "noon" and "night" apart reliably (tests/integration/native_api/test_default_model.py).
DEFAULT_SIZE = {"width": 512, "height": 512, "num_inference_steps": 20}


@pytest.fixture(scope="module")
def service(make_service, tiny_model):
    # The tiny SD model has no tiny decoder; the config's default step cache applies to both models.
    models = [{"name": "scenes", "path": str(MODEL)}, {"name": "bare", "path": str(tiny_model)}]
    return make_service(
        "speed", models=models, model={"dtype": "float32"}, defaults={"step_cache": {"mode": "deepcache"}}
    )


def test_the_models_list_says_which_levers_each_model_runs(service):
    with service.client() as client:
        listed = {model["name"]: model["speed_options"] for model in client.get("/api/v1/models").json()["models"]}
    assert listed["scenes"] == {"vae_decoder": ["full", "tiny"], "step_cache": ["deepcache"], "token_merging": True}
    assert listed["bare"]["vae_decoder"] == ["full"]


def _infotext(task) -> str:
    infotext, _ = read_embedded(httpx.get(task["result_url"]).content)
    assert infotext is not None
    return infotext


def test_the_shipped_tiny_decoder_draws_what_the_prompt_says(service):
    off = {"step_cache": {"mode": "off"}}
    with service.client() as client:
        for seed in (1, 2):
            pictures = {}
            for decoder in ("full", "tiny"):
                for when in ("noon", "night"):
                    body = {**DEFAULT_SIZE, **off, "prompt": f"a lake and green mountains at {when}", "seed": seed}
                    task = generate(client, **body, vae_decoder=decoder)
                    assert task["status"] == "completed", task
                    pictures[decoder, when] = fetch_image(task["result_url"])
            sky = {key: scene_stats.sky_luminance(picture) for key, picture in pictures.items()}
            assert sky["tiny", "night"] < sky["tiny", "noon"] - 0.2, sky
            full, tiny = (np.asarray(pictures[decoder, "noon"], dtype=float) for decoder in ("full", "tiny"))
            assert 0 < mean_abs_diff(full, tiny) < 12, mean_abs_diff(full, tiny)
        assert "VAE Decoder: TAESD" in _infotext(task)


def test_step_caching_and_token_merging_are_recorded_and_leave_nothing(service):
    with service.client() as client:
        plain = generate(client, **BODY, seed=5, step_cache={"mode": "off"})
        cached = generate(client, **BODY, seed=5)  # the config's default: DeepCache
        merged = generate(client, **BODY, seed=5, step_cache={"mode": "off"}, token_merging=0.5)
        again = generate(client, **BODY, seed=5, step_cache={"mode": "off"})
        for task in (plain, cached, merged, again):
            assert task["status"] == "completed", task
        assert "Step cache: deepcache interval 3 branch 0" in _infotext(cached)
        assert "Token merging ratio: 0.5" in _infotext(merged)
        assert "Step cache" not in _infotext(plain) and "Token merging" not in _infotext(plain)
        pixels = {
            name: fetch_pixels(task["result_url"])
            for name, task in (("plain", plain), ("cached", cached), ("merged", merged), ("again", again))
        }
        assert not np.array_equal(pixels["cached"], pixels["plain"])
        assert not np.array_equal(pixels["merged"], pixels["plain"])
        assert np.array_equal(pixels["again"], pixels["plain"])


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"model": "bare", "vae_decoder": "tiny"}, "vae_decoder", "微型解码器"),
        ({"step_cache": {"mode": "first_block"}}, "step_cache", "first_block"),
        ({"step_cache": {"mode": "deepcache", "threshold": 0.1}}, "step_cache", "threshold"),
        ({"model": "bare", "step_cache": {"mode": "deepcache", "branch": 9}}, "step_cache", "0 到 8"),  # 3 levels
    ],
)
def test_a_lever_the_model_cannot_run_is_a_400_naming_it(service, body, field, words):
    with service.client() as client:
        refused = client.post("/api/v1/generate", json={**BODY, **body})
    assert refused.status_code == 400, refused.text
    assert field in refused.text and words in refused.json()["detail"], refused.text


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"token_merging": 0.9}, ["body", "token_merging"]),
        ({"step_cache": {"mode": "fastest"}}, ["body", "step_cache", "mode"]),
        ({"step_cache": {"mode": "deepcache", "interval": 1}}, ["body", "step_cache", "interval"]),
        ({"vae_decoder": "small"}, ["body", "vae_decoder"]),
    ],
)
def test_out_of_range_levers_are_schema_errors(service, body, loc):
    with service.client() as client:
        refused = client.post("/api/v1/generate", json={**BODY, **body})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"] == loc, refused.text


def test_a1111s_decode_method_and_token_merging(service):
    host, port = service.url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), username="anyone", password=API_KEY)
    fields = {"prompt": "a lake and green mountains", "width": 128, "height": 128, "steps": 6, "seed": 4}
    fields |= {"sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": "scenes"}}
    asked = api.txt2img(
        **{
            **fields,
            "override_settings": {
                **fields["override_settings"],
                "sd_vae_decode_method": "TAESD",
                "token_merging_ratio": 0.3,
            },
        }
    )
    infotext = asked.info["infotexts"][0]
    assert "VAE Decoder: TAESD" in infotext and "Token merging ratio: 0.3" in infotext
    api.set_options({"sd_vae_decode_method": "TAESD"})
    try:
        assert api.get_options()["sd_vae_decode_method"] == "TAESD"
        by_option = api.txt2img(**fields)
        assert "VAE Decoder: TAESD" in by_option.info["infotexts"][0]
    finally:
        api.set_options({"sd_vae_decode_method": "Full"})
    assert "VAE Decoder" not in api.txt2img(**fields).info["infotexts"][0]
    refused = api.session.post(f"{api.baseurl}/options", json={"token_merging_ratio": 2})
    assert refused.status_code == 422 and "token_merging_ratio" in refused.text
