"""AUTOMATIC1111's API (/sdapi/v1) with the real `webuiapi` client, unchanged, against the real service."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.support.adapter_files import model_modules, write_adapter
from tests.support.services import API_KEY, gradient_image

OTHER_KEY = "sk-a1111-other"
SMALL = {"width": 64, "height": 64, "steps": 3}
STYLES_CSV = 'name,prompt,negative_prompt\nInk,"ink drawing of {prompt}, monochrome",colour\nSharp,highly detailed,\n'


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory, tiny_model):
    loras = tmp_path_factory.mktemp("a1111-loras")
    write_adapter(loras / "ink_style.safetensors", model_modules(tiny_model), "lora", seed=3, scale=1.0)
    keys = [{"key": API_KEY, "name": "main"}, {"key": OTHER_KEY, "name": "other"}]
    styles = tmp_path_factory.mktemp("a1111-styles") / "styles.csv"
    styles.write_text(STYLES_CSV, encoding="utf-8")
    return make_service(
        "a1111",
        api={"keys": keys},
        loras={"dir": str(loras)},
        model={"dtype": "float32"},
        queue={"max_pending": 2},
        styles={"file": str(styles)},
    )


@pytest.fixture()
def api(service):
    host, port = service.url.removeprefix("http://").split(":")
    # webuiapi's `--api-auth` support: HTTP Basic, any user name, the key as the password.
    return webuiapi.WebUIApi(host=host, port=int(port), username="anyone", password=API_KEY)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def test_txt2img_with_a_sampler_and_a_seed_is_reproducible(api):
    first = api.txt2img(prompt="a harbour", seed=5, sampler_name="DPM++ 2M", **SMALL)
    second = api.txt2img(prompt="a harbour", seed=5, sampler_name="DPM++ 2M", **SMALL)
    assert first.image.size == (64, 64) and first.image.format == "PNG"
    assert np.array_equal(_pixels(first.image), _pixels(second.image))
    assert first.info["seed"] == 5 and first.info["all_seeds"] == [5]
    assert first.info["sampler_name"] == "DPM++ 2M"
    assert "Sampler: DPM++ 2M, Schedule type: Automatic" in first.info["infotexts"][0]
    assert first.parameters["prompt"] == "a harbour"  # the request, echoed as A1111 does
    other_sampler = api.txt2img(prompt="a harbour", seed=5, sampler_name="Euler", **SMALL)
    assert not np.array_equal(_pixels(first.image), _pixels(other_sampler.image))
    karras = api.txt2img(prompt="a harbour", seed=5, sampler_name="DPM++ 2M", scheduler="Karras", **SMALL)
    assert karras.info["scheduler"] == "Karras" and "Schedule type: Karras" in karras.info["infotexts"][0]
    assert not np.array_equal(_pixels(first.image), _pixels(karras.image))
    legacy = api.txt2img(prompt="a harbour", seed=5, sampler_name="DPM++ 2M Karras", **SMALL)
    assert np.array_equal(_pixels(karras.image), _pixels(legacy.image))


def test_batch_size_3_follows_the_seed_rule(api):
    batch = api.txt2img(prompt="a harbour", seed=40, batch_size=3, **SMALL)
    assert batch.info["all_seeds"] == [40, 41, 42] and len(batch.images) == 3
    single = api.txt2img(prompt="a harbour", seed=42, **SMALL)
    assert np.abs(_pixels(batch.images[2]) - _pixels(single.image)).mean() <= 1.0
    assert not np.array_equal(_pixels(batch.images[0]), _pixels(batch.images[1]))
    two_iterations = api.txt2img(prompt="a harbour", seed=40, batch_size=2, n_iter=2, **SMALL)
    assert two_iterations.info["all_seeds"] == [40, 41, 42, 43]


def test_img2img_with_a_pil_image(api):
    source = gradient_image(96, 64)
    result = api.img2img(
        images=[source], prompt="repaint", seed=3, width=96, height=64, steps=4, denoising_strength=0.5
    )
    assert result.image.size == (96, 64)
    assert not np.array_equal(_pixels(result.image), _pixels(source))
    assert result.info["denoising_strength"] == 0.5
    # A1111 resizes the input to width x height (resize_mode 0).
    resized = api.img2img(images=[source], prompt="repaint", seed=3, width=64, height=64, steps=4)
    assert resized.image.size == (64, 64)
    kept = api.img2img(images=[source], prompt="x", seed=3, width=96, height=64, steps=4, include_init_images=True)
    assert len(kept.images) == 2 and kept.images[1].size == (96, 64)


def test_a_lora_prompt_tag_applies_the_lora(api, service):
    plain = api.txt2img(prompt="a harbour", seed=9, **SMALL)
    styled = api.txt2img(prompt="a harbour <lora:ink_style:1>", seed=9, **SMALL)
    assert np.abs(_pixels(plain.image) - _pixels(styled.image)).mean() > 1.0
    assert styled.info["extra_generation_params"] == {"Lora": ["ink_style:1"]}
    assert "Lora hashes" in styled.info["infotexts"][0]
    # The tag is the same LoRA as the native API's `loras` entry: identical pixels.
    with service.client() as native:
        task = native.post(
            "/api/v1/generate?wait=60",
            json={
                "prompt": "a harbour",
                "seed": 9,
                "width": 64,
                "height": 64,
                "num_inference_steps": 3,
                "scheduler": "EulerAncestralDiscreteScheduler",  # webuiapi's default sampler, Euler a
                "guidance_scale": 7.0,  # and its default cfg_scale
                "loras": [{"name": "ink_style", "weight": 1}],
            },
        ).json()
        if task["status"] != "completed":
            task = native.get(f"/api/v1/tasks/{task['task_id']}?wait=60").json()
    native_image = Image.open(io.BytesIO(httpx.get(task["result_url"]).content))
    assert np.array_equal(_pixels(native_image), _pixels(styled.image))
    with pytest.raises(RuntimeError, match="LoRA 不存在"):
        api.txt2img(prompt="x <lora:missing:0.5>", **SMALL)


def test_lists_models_samplers_schedulers_loras_and_options(api):
    contract = ["DPM++ 2M", "Euler a", "Euler", "DDIM", "PLMS", "LMS", "Heun", "DPM2", "DPM2 a"]
    assert sorted(api.util_get_sampler_names()) == sorted([*contract, "UniPC", "DEIS", "DPM++ SDE", "LCM", "TCD"])
    assert [s["label"] for s in api.get_schedulers()] == ["Automatic", "Karras"]
    [model] = api.get_sd_models()
    assert len(model["sha256"]) == 64 and model["title"] == f"{model['model_name']} [{model['sha256'][:10]}]"
    assert api.util_get_current_model() == model["title"]
    assert [lora["name"] for lora in api.get_loras()] == ["ink_style"]
    api.util_set_model(model["model_name"])  # choosing the model it serves is fine
    refused = api.set_options({"eta_noise_seed_delta": 31337})  # read-only: set in config.yaml
    assert "eta_noise_seed_delta" in refused["detail"]


def test_options_that_change_the_picture_are_refused_by_name_and_harmless_ones_accepted(api, service):
    with pytest.raises(RuntimeError) as refused:
        api.txt2img(prompt="x", restore_faces=True, **SMALL)
    status, text = refused.value.args
    assert status == 422 and "restore_faces" in text
    with pytest.raises(RuntimeError, match="SD upscale"):  # the scripts served are named
        api.txt2img(prompt="x", script_name="X/Y/Z plot", **SMALL)
    with pytest.raises(RuntimeError, match="ADetailer"):
        api.txt2img(prompt="x", alwayson_scripts={"ADetailer": {"args": [True, {}]}}, **SMALL)
    with pytest.raises(
        RuntimeError, match="Euler a, PLMS, LMS, Heun, DPM2, DPM2 a"
    ):  # an unknown sampler lists the known
        api.txt2img(prompt="x", sampler_name="Restart", **SMALL)
    with pytest.raises(RuntimeError, match="initial_noise_multiplier"):
        api.img2img(images=[gradient_image(64, 64)], initial_noise_multiplier=0.5, prompt="x", **SMALL)
    fine = api.txt2img(prompt="x", save_images=True, do_not_save_grid=True, seed=1, **SMALL)
    assert len(fine.images) == 1
    with pytest.raises(RuntimeError) as too_many:
        api.txt2img(prompt="x", batch_size=4, n_iter=3, **SMALL)
    assert too_many.value.args[0] == 422 and "batch_size" in too_many.value.args[1]
    bad_key = httpx.post(
        f"{service.url}/sdapi/v1/txt2img", json={"prompt": "x"}, auth=("user", "not-a-key"), timeout=30
    )
    assert bad_key.status_code == 401 and bad_key.json()["error"] == "Unauthorized"
    header_key = httpx.get(f"{service.url}/sdapi/v1/samplers", headers={"X-API-Key": API_KEY}, timeout=30)
    assert header_key.status_code == 200


def test_png_info_reads_back_what_sdapi_embedded(api):
    made = api.txt2img(prompt="a harbour", negative_prompt="fog", seed=21, cfg_scale=6.5, **SMALL)
    read = api.png_info(made.image)
    assert read.info.startswith("a harbour\nNegative prompt: fog\nSteps: 3")
    assert read.parameters["Seed"] == "21" and read.parameters["CFG scale"] == "6.5"
    assert read.parameters["Size-1"] == "64" and read.parameters["Negative prompt"] == "fog"
    assert json.loads(read.json["items"]["sdapi"])["seed"] == 21


def test_samples_format_webp_gives_webp_whose_parameters_png_info_reads(service):
    auth = ("user", API_KEY)
    made = httpx.post(
        f"{service.url}/sdapi/v1/txt2img",
        json={"prompt": "a harbour", "seed": 21, "override_settings": {"samples_format": "webp"}, **SMALL},
        auth=auth,
        timeout=120,
    )
    assert made.status_code == 200, made.text
    raw = base64.b64decode(made.json()["images"][0])
    assert Image.open(io.BytesIO(raw)).format == "WEBP"
    read = httpx.post(
        f"{service.url}/sdapi/v1/png-info",
        json={"image": "data:image/webp;base64," + made.json()["images"][0]},
        auth=auth,
        timeout=60,
    )
    assert read.status_code == 200, read.text
    assert read.json()["info"].startswith("a harbour\nSteps: 3")
    assert read.json()["parameters"]["Seed"] == "21"
    refused = httpx.post(
        f"{service.url}/sdapi/v1/txt2img",
        json={"prompt": "x", "override_settings": {"samples_format": "gif"}, **SMALL},
        auth=auth,
        timeout=60,
    )
    assert refused.status_code == 422 and "samples_format" in refused.text


def test_interrupt_cancels_only_the_callers_running_task(api, service):
    other = webuiapi.WebUIApi(baseurl=f"{service.url}/sdapi/v1", username="x", password=OTHER_KEY)
    results = {}

    def run(client, name):
        results[name] = client.txt2img(prompt="slow", width=256, height=256, steps=150, seed=1)

    threads = [threading.Thread(target=run, args=(client, name)) for client, name in ((api, "mine"), (other, "theirs"))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while not (progress := api.get_progress())["state"]["sampling_step"]:
        assert time.monotonic() < deadline, progress
        time.sleep(0.1)
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
    assert progress["state"]["sampling_steps"] == 150
    api.interrupt()
    threads[0].join(timeout=60)
    assert results["mine"].images == [] and results["mine"].info["interrupted"] is True
    # The other key's task went on: it is still running (or done), never cancelled by someone else's interrupt.
    with service.client(OTHER_KEY) as native:
        [theirs] = native.get("/api/v1/tasks?limit=1").json()["tasks"]
        assert theirs["status"] in ("pending", "processing", "completed"), theirs
        native.post(f"/api/v1/tasks/{theirs['task_id']}/cancel")
    threads[1].join(timeout=60)


def test_dialect_requests_are_ordinary_tasks_and_obey_the_queue_limit(api, service):
    with service.client() as native:
        listed = native.get("/api/v1/tasks?limit=100").json()["tasks"]
        assert any(task["seed"] == 21 and task["status"] == "completed" for task in listed)
        blockers = [
            native.post(
                "/api/v1/generate", json={"prompt": "b", "width": 256, "height": 256, "num_inference_steps": 150}
            )
            for _ in range(3)
        ]
        with pytest.raises(RuntimeError) as full:
            api.txt2img(prompt="x", **SMALL)
        assert full.value.args[0] == 429 and "队列已满" in full.value.args[1]
        for blocker in blockers:
            if blocker.status_code == 200:
                native.post(f"/api/v1/tasks/{blocker.json()['task_id']}/cancel")


def test_base64_without_a_data_url_prefix_and_a_bad_image(service):
    buffer = io.BytesIO()
    gradient_image(64, 64).save(buffer, format="PNG")
    raw = base64.b64encode(buffer.getvalue()).decode()
    body = {"init_images": [raw], "prompt": "x", "steps": 2, "width": 64, "height": 64}
    with service.client() as client:
        answer = client.post("/sdapi/v1/img2img", json=body, timeout=60)
        assert answer.status_code == 200 and len(answer.json()["images"]) == 1
        broken = client.post("/sdapi/v1/img2img", json={**body, "init_images": ["not base64!"]})
        assert broken.status_code == 422 and "init_images" in broken.json()["detail"]
        not_json = client.post("/sdapi/v1/txt2img", content=b"[1, 2", headers={"Content-Type": "application/json"})
        assert not_json.status_code in (400, 422) and "detail" in not_json.json()


def test_both_dialects_are_in_the_docs_under_their_own_tags(service):
    paths = httpx.get(f"{service.url}/openapi.json").json()["paths"]
    assert paths["/sdapi/v1/txt2img"]["post"]["tags"] == ["automatic1111"]
    assert paths["/sdapi/v1/progress"]["get"]["tags"] == ["automatic1111"]
    assert paths["/v1/images/generations"]["post"]["tags"] == ["openai"]
    assert {"BasicAuth": []} in paths["/sdapi/v1/img2img"]["post"]["security"]


def test_clip_skip_through_override_settings_and_the_option(api):
    """Issue 47, item 2: CLIP_stop_at_last_layers (A1111's clip skip) per request and as the key's option; "Clip
    skip: 2" in the infotext as A1111 writes it. (That 2 is diffusers' clip_skip=1: tests/engines/test_clip_skip.py.)"""
    plain = api.txt2img(prompt="a harbour", seed=8, **SMALL)
    skipped = api.txt2img(prompt="a harbour", seed=8, override_settings={"CLIP_stop_at_last_layers": 2}, **SMALL)
    assert skipped.info["clip_skip"] == 2 and "Clip skip: 2" in skipped.info["infotexts"][0]
    assert "Clip skip" not in plain.info["infotexts"][0]
    assert not np.array_equal(_pixels(plain.image), _pixels(skipped.image))
    api.set_options({"CLIP_stop_at_last_layers": 2})
    try:
        assert api.get_options()["CLIP_stop_at_last_layers"] == 2
        by_option = api.txt2img(prompt="a harbour", seed=8, **SMALL)
        assert np.array_equal(_pixels(by_option.image), _pixels(skipped.image))
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1})
    refused = api.session.post(
        f"{api.baseurl}/txt2img", json={"prompt": "x", "override_settings": {"CLIP_stop_at_last_layers": 13}}
    )
    assert refused.status_code == 422 and "CLIP_stop_at_last_layers" in refused.text


def test_styles_from_the_styles_file_land_in_the_prompt_the_infotext_and_the_list(api, service):
    """Issue 47, item 5: A1111's styles.csv at styles.file, listed by /prompt-styles and applied by `styles` (A1111's
    and the native field alike)."""
    assert api.get_prompt_styles() == [
        {"name": "Ink", "prompt": "ink drawing of {prompt}, monochrome", "negative_prompt": "colour"},
        {"name": "Sharp", "prompt": "highly detailed", "negative_prompt": ""},
    ]
    styled = api.txt2img(prompt="a harbour", seed=4, styles=["Ink", "Sharp"], **SMALL)
    infotext = styled.info["infotexts"][0]
    assert infotext.startswith("ink drawing of a harbour, monochrome, highly detailed\nNegative prompt: colour\n")
    assert styled.info["styles"] == ["Ink", "Sharp"]
    written = api.txt2img(
        prompt="ink drawing of a harbour, monochrome, highly detailed", negative_prompt="colour", seed=4, **SMALL
    )
    assert np.array_equal(_pixels(styled.image), _pixels(written.image))  # the same prompts as written out
    refused = api.session.post(f"{api.baseurl}/txt2img", json={"prompt": "x", "styles": ["Watercolour"]})
    assert refused.status_code == 422 and "Watercolour" in refused.text and "Ink" in refused.text
    with service.client() as client:
        native = client.post("/api/v1/generate", json={"prompt": "x", "styles": ["Nope"]})
        assert native.status_code == 400 and "Sharp" in native.json()["detail"]


def test_variation_seeds_as_a1111_clients_send_them(api):
    """Issue 47, item 4: subseed and subseed_strength (the "variations" buttons): strength 1 is the subseed's
    picture, strength 0 the seed's (with a sampler that adds no noise per step: an ancestral one's later noise stays
    the seed's, as in A1111); A1111's infotext names them; seed_resize_from_w/h is read."""
    small = {**SMALL, "sampler_name": "Euler"}
    seed_picture = api.txt2img(prompt="a harbour", seed=21, **small)
    subseed_picture = api.txt2img(prompt="a harbour", seed=77, **small)
    full = api.txt2img(prompt="a harbour", seed=21, subseed=77, subseed_strength=1.0, **small)
    assert np.array_equal(_pixels(full.image), _pixels(subseed_picture.image))
    assert full.info["subseed"] == 77 and full.info["subseed_strength"] == 1.0
    assert "Variation seed: 77, Variation seed strength: 1.0" in full.info["infotexts"][0]
    none = api.txt2img(prompt="a harbour", seed=21, subseed=77, subseed_strength=0, **small)
    assert np.array_equal(_pixels(none.image), _pixels(seed_picture.image))
    resized = api.txt2img(prompt="a harbour", seed=21, seed_resize_from_w=32, seed_resize_from_h=32, **small)
    assert "Seed resize from: 32x32" in resized.info["infotexts"][0]
    assert not np.array_equal(_pixels(resized.image), _pixels(seed_picture.image))


def test_prompts_read_as_a1111_reads_them(api, service):
    """Issue 47, item 1: (word:1.0) is word, weights change the picture, a prompt's tail past 75 tokens counts,
    prompt editing changes the picture midway; prompt_syntax: plain reads the brackets as text."""
    plain = api.txt2img(prompt="a red ball", seed=12, **SMALL)
    assert np.array_equal(_pixels(api.txt2img(prompt="a red (ball:1.0)", seed=12, **SMALL).image), _pixels(plain.image))
    weighted = api.txt2img(prompt="a red (ball:1.6)", seed=12, **SMALL)
    assert not np.array_equal(_pixels(weighted.image), _pixels(plain.image))
    assert weighted.info["infotexts"][0].startswith("a red (ball:1.6)\n")  # recorded as written
    head = ", ".join(["a quiet valley"] * 30)
    one = api.txt2img(prompt=f"{head}, a red ball", seed=12, **SMALL)
    two = api.txt2img(prompt=f"{head}, snowy mountains", seed=12, **SMALL)
    assert not np.array_equal(_pixels(one.image), _pixels(two.image))
    broken = api.txt2img(prompt="a red ball BREAK a blue sky", seed=12, **SMALL)
    joined = api.txt2img(prompt="a red ball a blue sky", seed=12, **SMALL)
    assert not np.array_equal(_pixels(broken.image), _pixels(joined.image))  # two chunks, not one
    edited = api.txt2img(prompt="a [red:blue:0.5] ball", seed=12, **SMALL)
    blue = api.txt2img(prompt="a blue ball", seed=12, **SMALL)
    assert not np.array_equal(_pixels(edited.image), _pixels(plain.image))
    assert not np.array_equal(_pixels(edited.image), _pixels(blue.image))
    with service.client() as client:  # the native API reads the syntax too, unless told prompt_syntax: plain
        body = {"prompt": "a red (ball:1.6)", "width": 64, "height": 64, "num_inference_steps": 3, "seed": 12}
        native = client.post("/api/v1/generate", json=body)
        as_text = client.post("/api/v1/generate", json={**body, "prompt_syntax": "plain"})
        assert native.status_code == as_text.status_code == 200


def test_eta_and_churn_as_a1111_clients_send_them(api, service):
    """Issue 47, item 9: eta honoured on DDIM, s_churn on Euler; where A1111 would use them and diffusers cannot,
    refused by name; the native API's step_options the same way."""
    ddim = {**SMALL, "sampler_name": "DDIM"}  # (webuiapi sends eta=1 unless told otherwise, as A1111's UI does)
    deterministic = api.txt2img(prompt="a harbour", seed=3, eta=0, **ddim)
    assert np.array_equal(
        _pixels(api.txt2img(prompt="a harbour", seed=3, eta=0, **ddim).image), _pixels(deterministic.image)
    )
    noisy = api.txt2img(prompt="a harbour", seed=3, eta=1, **ddim)
    assert not np.array_equal(_pixels(noisy.image), _pixels(deterministic.image))
    euler = {**SMALL, "sampler_name": "Euler"}
    churned = api.txt2img(prompt="a harbour", seed=3, s_churn=30, **euler)
    assert not np.array_equal(_pixels(churned.image), _pixels(api.txt2img(prompt="a harbour", seed=3, **euler).image))
    for body, named in (
        ({"sampler_name": "Euler a", "eta": 0.5}, "eta"),
        ({"sampler_name": "Heun", "s_churn": 5}, "s_churn"),
    ):
        refused = api.session.post(f"{api.baseurl}/txt2img", json={"prompt": "x", **SMALL, **body})
        assert refused.status_code == 422 and named in refused.text, refused.text
    with service.client() as client:
        body = {"prompt": "x", "width": 64, "height": 64, "num_inference_steps": 3}
        ok = client.post("/api/v1/generate", json={**body, "scheduler": "DDIMScheduler", "step_options": {"eta": 0.5}})
        assert ok.status_code == 200
        bad = client.post("/api/v1/generate", json={**body, "scheduler": "PNDMScheduler", "step_options": {"eta": 0.5}})
        assert bad.status_code == 400 and "step_options" in bad.json()["detail"]
