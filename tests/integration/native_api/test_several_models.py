"""Several models on one server: requests choose one by name; a worker keeps at most model.max_loaded in memory,
loading on demand and dropping the least recently used; LoRAs are refused on a model of another family."""

from __future__ import annotations

import pytest

from tests.support.adapter_files import model_modules, write_adapter
from tests.support.services import fetch_image, mean_abs_diff
from tests.support.services import fetch_pixels as pixels
from tests.support.services import generate as run

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory, tiny_model, tiny_sdxl):
    loras = tmp_path_factory.mktemp("models-loras")
    write_adapter(loras / "sd_style.safetensors", model_modules(tiny_model), "lora", seed=4)
    models = [{"name": "base", "path": str(tiny_model)}, {"name": "xl", "path": str(tiny_sdxl)}]
    return make_service(
        "models",
        models=models,
        model={"max_loaded": 1, "dtype": "float32"},
        defaults={"width": None, "height": None, "num_inference_steps": 2},
        loras={"dir": str(loras)},
    )


def pool(service):
    return service.app.state.runtime.engine


def test_models_are_listed_and_chosen_by_name(service):
    with service.client() as client:
        listed = {model["name"]: model for model in client.get("/api/v1/models").json()["models"]}
        assert set(listed) == {"base", "xl"}
        assert listed["base"]["default"] and not listed["xl"]["default"]
        assert listed["xl"]["family"] == "sdxl" and listed["xl"]["native_size"] == [1024, 1024]
        assert listed["base"]["engines"] == ["torch"]
        default = run(client, prompt="a", seed=1, **SMALL)
        chosen = run(client, prompt="a", seed=1, model="xl", **SMALL)
        assert (default["model"], chosen["model"]) == ("base", "xl")
        assert mean_abs_diff(pixels(default["result_url"]), pixels(chosen["result_url"])) > 1.0
        unknown = client.post("/api/v1/generate", json={"prompt": "a", "model": "sd3"})
        assert unknown.status_code == 400 and "可用模型：base, xl" in unknown.json()["detail"]
        native = run(client, prompt="a", seed=1, model="xl", num_inference_steps=1)
        assert fetch_image(native["result_url"]).size == (1024, 1024)  # xl's native size, not base's


def test_alternating_models_stays_within_max_loaded_and_reproduces(service, caplog):
    engine = pool(service)
    with service.client() as client, caplog.at_level("INFO", logger="sdapi.worker"):
        loads_before = engine.loads
        first = {name: run(client, prompt="b", seed=5, model=name, **SMALL) for name in ("base", "xl")}
        loads = engine.loads
        for _ in range(3):
            for name in ("base", "xl"):
                again = run(client, prompt="b", seed=5, model=name, **SMALL)
                assert again["status"] == "completed"
                # A reloaded model makes the same pixels as before it was dropped.
                assert mean_abs_diff(pixels(again["result_url"]), pixels(first[name]["result_url"])) == 0.0
                # It waited in the queue while its model loaded: given back, not run twice, not failed.
                assert again["attempts"] == 1
                assert len(engine.loaded_models()) == 1 and engine.loaded_models() == [name]
        assert engine.loads == loads + 6  # max_loaded 1: every switch loads
        requeued = [
            record.getMessage() for record in caplog.records if "waits in the queue while model" in record.getMessage()
        ]
        assert len(requeued) == engine.loads - loads_before, requeued  # each load: its task waited in the queue
        listed = {m["name"]: m["loaded"] for m in client.get("/api/v1/models").json()["models"]}
        assert listed == {"base": False, "xl": True}


def test_a_lora_for_another_family_is_refused(service):
    with service.client() as client:
        assert run(client, prompt="c", seed=2, loras=[{"name": "sd_style"}], **SMALL)["status"] == "completed"
        refused = client.post(
            "/api/v1/generate", json={"prompt": "c", "model": "xl", "loras": [{"name": "sd_style"}], **SMALL}
        )
    assert refused.status_code == 400
    assert refused.json()["detail"] == "LoRA sd_style 不可用：为 SD 1.x/2.x 制作，所选模型为 SDXL"


def test_the_dialects_map_their_model_fields(service):
    import openai
    import webuiapi

    from tests.support.services import API_KEY

    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0)
    assert [model.id for model in client.models.list().data] == ["sdapi", "base", "xl"]
    made = client.images.generate(prompt="d", model="xl", size="64x64", extra_body={"num_inference_steps": 1})
    assert made.data[0].url
    with pytest.raises(openai.NotFoundError, match="sdapi, base, xl"):
        client.images.generate(prompt="d", model="sd3", size="64x64")
    api = webuiapi.WebUIApi(baseurl=f"{service.url}/sdapi/v1", username="u", password=API_KEY)
    titles = api.util_get_model_names()
    assert [title.split(" [")[0] for title in sorted(titles)] == ["base", "xl"]
    xl_title = next(title for title in titles if title.startswith("xl"))
    picked = api.txt2img(prompt="d", steps=1, width=64, height=64, override_settings={"sd_model_checkpoint": xl_title})
    assert picked.info["sd_model_name"] == "xl"
    with service.client() as native:
        [task] = native.get("/api/v1/tasks?limit=1").json()["tasks"]
    assert task["model"] == "xl"
