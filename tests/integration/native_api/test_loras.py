"""LoRA, LoHa and LoKr through the API on the torch engine, checked against independently computed expectations."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sdapi.config import ModelConfig
from sdapi.engines import Run
from sdapi.engines.torch_engine import TorchEngine
from tests.support.adapter_files import (
    model_modules,
    write_adapter,
)
from tests.support.factories import make_params
from tests.support.services import decided_loras, fetch_pixels, generate, in_process, mean_abs_diff

GOOD = ("style_lora", "style_loha", "style_lokr", "te_only", "unet_lora", "peft_lora")
BROKEN = ("sdxl_style", "wrong_shapes", "corrupt", "unknown_keys", "nan_values", "too_large")


@pytest.fixture(scope="module")
def lora_service(make_service, lora_dir):
    loras = {"dir": str(lora_dir), "max_per_request": 3, "max_file_mb": 1, "cache_size": 2}
    running = make_service("lora-service", loras=loras, model={"dtype": "float32"})
    with running.client() as client:
        decided_loras(client)  # fits are checked just after the model loads
    return running


@pytest.fixture()
def lora_client(lora_service):
    with lora_service.client() as http:
        yield http


def _image(client, **body):
    result = generate(client, prompt="a castle", seed=42, **body)
    assert result["status"] == "completed", result
    return result, fetch_pixels(result["result_url"])


def test_the_library_lists_every_file_with_what_it_is(lora_client, lora_dir):
    entries = decided_loras(lora_client)
    assert set(entries) == set(GOOD) | set(BROKEN)
    expected_types = {
        "style_lora": "lora",
        "style_loha": "loha",
        "style_lokr": "lokr",
        "te_only": "lora",
        "peft_lora": "lora",
        "unet_lora": "lora",
    }
    for name, kind in expected_types.items():
        entry = entries[name]
        assert entry["type"] == kind and entry["fits"] is True and entry["error"] is None, entry
        data = (lora_dir / f"{name}.safetensors").read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()[:12]
        assert entry["size_bytes"] == len(data)
    assert entries["style_lora"]["parts"] == ["text_encoder", "unet"]
    assert entries["te_only"]["parts"] == ["text_encoder"]
    assert entries["peft_lora"]["parts"] == ["unet"]
    reasons = {
        "sdxl_style": "SDXL",
        "wrong_shapes": "shape",
        "corrupt": "cannot read",
        "unknown_keys": "unknown keys",
        "nan_values": "NaN",
        "too_large": "max_file_mb",
    }
    for name, reason in reasons.items():
        assert entries[name]["fits"] is False and reason in entries[name]["error"], entries[name]


def test_refresh_picks_up_added_and_removed_files(lora_client, lora_dir, tiny_model):
    extra = lora_dir / "added_later.safetensors"
    write_adapter(extra, model_modules(tiny_model), "lokr", parts=("text_encoder",), seed=9)
    try:
        names = {e["name"] for e in lora_client.post("/api/v1/loras/refresh").json()["loras"]}
        assert "added_later" in names
        assert _image(lora_client, loras=[{"name": "added_later"}])[0]["status"] == "completed"
    finally:
        extra.unlink()
    names = {e["name"] for e in lora_client.post("/api/v1/loras/refresh").json()["loras"]}
    assert "added_later" not in names


def test_each_type_changes_the_picture_and_weight_zero_gives_the_base(lora_client):
    _, base = _image(lora_client)
    for name in ("style_lora", "style_loha", "style_lokr", "te_only", "unet_lora"):
        result, styled = _image(lora_client, loras=[{"name": name, "weight": 1.0}])
        assert result["loras"] == [{"name": name, "weight": 1.0}]
        assert mean_abs_diff(base, styled) > 1.0, name
        _, zero = _image(lora_client, loras=[{"name": name, "weight": 0.0}])
        assert np.array_equal(base, zero), name


def test_no_bleed_between_requests(lora_client):
    _, before = _image(lora_client)
    _image(lora_client, loras=[{"name": "style_loha", "weight": 1.5}, {"name": "style_lora", "weight": -0.7}])
    _, after = _image(lora_client)
    assert np.array_equal(before, after)


def test_a_request_without_loras_after_one_with_matches_a_fresh_process(lora_client, tiny_model):
    _, served = _image(lora_client, loras=[{"name": "style_lokr"}])
    _, base_after_lora = _image(lora_client)
    fresh = TorchEngine(ModelConfig(path=str(tiny_model), device="cpu", dtype="float32"))
    fresh.load()
    image = fresh.generate(
        Run(make_params(prompt="a castle", width=128, height=96, num_inference_steps=4, seed=42))
    ).images[0]
    assert np.array_equal(np.asarray(image, dtype=np.float64), base_after_lora)
    assert mean_abs_diff(served, base_after_lora) > 1.0


def test_mixed_sets_work_and_combine(lora_client):
    _, lora_only = _image(lora_client, loras=[{"name": "style_lora"}])
    _, loha_only = _image(lora_client, loras=[{"name": "style_loha"}])
    result, mixed = _image(lora_client, loras=[{"name": "style_lora"}, {"name": "style_loha", "weight": 0.5}])
    assert result["loras"] == [{"name": "style_lora", "weight": 1.0}, {"name": "style_loha", "weight": 0.5}]
    assert mean_abs_diff(mixed, lora_only) > 0.5 and mean_abs_diff(mixed, loha_only) > 0.5
    _, again = _image(lora_client, loras=[{"name": "style_lora"}, {"name": "style_loha", "weight": 0.5}])
    assert np.array_equal(mixed, again)


def test_the_peft_layout_means_the_same_as_kohya(lora_client):
    _, kohya = _image(lora_client, loras=[{"name": "unet_lora"}])
    _, peft = _image(lora_client, loras=[{"name": "peft_lora"}])
    assert mean_abs_diff(kohya, peft) < 0.01


@pytest.mark.parametrize(
    ("loras", "fragment"),
    [
        ([{"name": "no_such_style"}], "style_lora"),
        ([{"name": "sdxl_style"}], "SDXL"),
        ([{"name": "wrong_shapes"}], "shape"),
        ([{"name": "corrupt"}], "cannot read"),
        ([{"name": "unknown_keys"}], "unknown keys"),
        ([{"name": "nan_values"}], "NaN"),
        ([{"name": "too_large"}], "max_file_mb"),
        ([{"name": "style_lora"}, {"name": "style_lora"}], "重复"),
        ([{"name": n} for n in ("style_lora", "style_loha", "style_lokr", "te_only")], "3"),
    ],
)
def test_unusable_requests_are_400_at_submit(lora_client, loras, fragment):
    response = lora_client.post("/api/v1/generate", json={"prompt": "a castle", "loras": loras})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "LoRA" in detail or "loras" in detail
    assert fragment in detail


@pytest.mark.parametrize(
    ("loras", "loc"),
    [
        ([{"name": "style_lora", "weight": 2.5}], ["body", "loras", "0", "weight"]),
        ([{"name": "style_lora", "weight": -2.01}], ["body", "loras", "0", "weight"]),
        ([{"weight": 1.0}], ["body", "loras", "0", "name"]),
        ([{"name": ""}], ["body", "loras", "0", "name"]),
        ([{"name": "style_lora", "strength": 1}], ["body", "loras", "0", "strength"]),
        ("style_lora", ["body", "loras"]),
        ([{"name": 3}], ["body", "loras", "0", "name"]),
    ],
)
def test_malformed_lora_lists_are_422(lora_client, loras, loc):
    response = lora_client.post("/api/v1/generate", json={"prompt": "a castle", "loras": loras})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_the_service_keeps_running_after_bad_files(lora_client):
    assert lora_client.get("/health").json()["model_loaded"] is True
    assert _image(lora_client, loras=[{"name": "style_lokr"}])[0]["status"] == "completed"


def test_house_style_defaults_apply_to_every_request(tmp_path, tiny_model, lora_dir):
    loras = {"dir": str(lora_dir), "defaults": [{"name": "style_lora", "weight": 0.8}], "max_file_mb": 1}
    with in_process(tmp_path, tiny_model, loras=loras, model={"dtype": "float32"}) as service, service.client() as c:
        plain, styled = _image(c)
        assert plain["loras"] == [{"name": "style_lora", "weight": 0.8}]
        _, same = _image(c, loras=[{"name": "style_lora", "weight": 0.8}])
        assert np.array_equal(styled, same)
        overridden, switched_off = _image(c, loras=[{"name": "style_lora", "weight": 0.0}])
        assert overridden["loras"] == [{"name": "style_lora", "weight": 0.0}]
        assert mean_abs_diff(styled, switched_off) > 1.0


# -- the math, checked independently ----------------------------------------------------------------------
