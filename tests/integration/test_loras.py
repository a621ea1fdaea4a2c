"""LoRA, LoHa and LoKr through the API on the torch engine, checked against independently computed expectations."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from sdapi.config import ModelConfig
from sdapi.core.request import LoraSpec
from sdapi.devtools.testing.adapter_files import (
    model_modules,
    write_adapter,
    write_peft_copy,
    write_sdxl_style,
    write_wrong_shapes,
)
from sdapi.devtools.testing.factories import make_params
from sdapi.devtools.testing.services import fetch_pixels, generate, in_process, mean_abs_diff
from sdapi.engines.torch_engine import TorchEngine

GOOD = ("style_lora", "style_loha", "style_lokr", "te_only", "unet_lora", "peft_lora")
BROKEN = ("sdxl_style", "wrong_shapes", "corrupt", "unknown_keys", "nan_values", "too_large")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("loras")
    modules = model_modules(tiny_model)
    write_adapter(folder / "style_lora.safetensors", modules, "lora", seed=1)
    write_adapter(folder / "style_loha.safetensors", modules, "loha", seed=2)
    write_adapter(folder / "style_lokr.safetensors", modules, "lokr", seed=3)
    write_adapter(folder / "te_only.safetensors", modules, "lora", parts=("text_encoder",), seed=4, scale=1.0)
    unet_lora = write_adapter(folder / "unet_lora.safetensors", modules, "lora", parts=("unet",), seed=5, convs=False)
    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    paths = {"lora_unet_" + path.replace(".", "_"): path for path, _ in unet.named_modules()}
    write_peft_copy(unet_lora, folder / "peft_lora.safetensors", paths)
    write_sdxl_style(folder / "sdxl_style.safetensors")
    write_wrong_shapes(folder / "wrong_shapes.safetensors", modules)
    (folder / "corrupt.safetensors").write_bytes(b"\x00\x01 definitely not safetensors")
    save_file({"model.diffusion_model.foo.weight": torch.zeros(2, 2)}, str(folder / "unknown_keys.safetensors"))
    nan = write_adapter(folder / "nan_values.safetensors", modules, "lora", parts=("text_encoder",), seed=6)
    first = next(iter(nan))
    nan[first][0] = float("nan")
    save_file(nan, str(folder / "nan_values.safetensors"))
    save_file({"lora_te_x.lora_down.weight": torch.zeros(600, 600)}, str(folder / "too_large.safetensors"))
    return folder


@pytest.fixture(scope="module")
def lora_service(tmp_path_factory, tiny_model, lora_dir):
    loras = {"dir": str(lora_dir), "max_per_request": 3, "max_file_mb": 1, "cache_size": 2}
    with in_process(
        tmp_path_factory.mktemp("lora-service"), tiny_model, loras=loras, model={"dtype": "float32"}
    ) as running:
        with running.client() as client:
            _decided_entries(client)  # fits are checked just after the model loads
        yield running


@pytest.fixture()
def lora_client(lora_service):
    with lora_service.client() as http:
        yield http


def _image(client, **body):
    result = generate(client, prompt="a castle", seed=42, **body)
    assert result["status"] == "completed", result
    return result, fetch_pixels(result["result_url"])


def _decided_entries(client):
    """The library listing once every file's fit is decided (checked right after the model loads)."""
    deadline = time.monotonic() + 30
    while True:
        entries = client.get("/api/v1/loras").json()["loras"]
        if all(entry["fits"] is not None for entry in entries) or time.monotonic() > deadline:
            return {entry["name"]: entry for entry in entries}
        time.sleep(0.05)


def test_the_library_lists_every_file_with_what_it_is(lora_client, lora_dir):
    entries = _decided_entries(lora_client)
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
        make_params(prompt="a castle", width=128, height=96, num_inference_steps=4, seed=42),
        None,
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


def _expected_delta(tensors, module_key, kind, shape):
    """ΔW straight from the file's tensors with numpy, following the published formulas."""
    t = {k.split(".", 1)[1]: v.double().numpy() for k, v in tensors.items() if k.startswith(module_key + ".")}
    if kind == "lora":
        rank = t["lora_down.weight"].shape[0]
        delta = t["lora_up.weight"].reshape(shape[0], rank) @ t["lora_down.weight"].reshape(rank, -1)
        return delta.reshape(shape) * float(t["alpha"]) / rank
    if kind == "loha":
        rank = t["hada_w1_b"].shape[0]
        delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        return delta.reshape(shape) * float(t["alpha"]) / rank
    w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
    return np.kron(t["lokr_w1"], w2).reshape(shape) * float(t["alpha"]) / t["lokr_w2_b"].shape[0]


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
        expected = 0.7 * _expected_delta(tensors, module_key, kind, tuple(weight.shape))
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
