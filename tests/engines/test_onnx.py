"""The ONNX path: export (with LoRAs merged), the ONNX engine through the API, routing, and pixel parity with torch."""

from __future__ import annotations

import time

import httpx
import pytest

from sdapi.config import ModelConfig, OnnxConfig, load_config
from sdapi.core.schedulers import SCHEDULER_NAMES
from sdapi.engines.onnx_engine import OnnxEngine
from sdapi.engines.router import EngineRouter
from sdapi.engines.torch_engine import TorchEngine
from sdapi.errors import GenerationFailed
from tests.support.embedding_files import vectors, write_a1111_safetensors
from tests.support.services import (
    InProcessService,
    data_url,
    fetch_image,
    fetch_pixels,
    generate,
    gradient_image,
    in_process,
    mean_abs_diff,
    submit,
    wait_for_task,
    write_config,
)

pytestmark = [pytest.mark.slow]

PARITY = 1.0  # mean absolute pixel difference on 0-255, the bound
FP32 = {"dtype": "float32"}


def _service(tmp_path_factory, name, tiny_model, lora_folder, **model):
    directory = tmp_path_factory.mktemp(name)
    return in_process(directory, tiny_model, model={**FP32, **model}, loras={"dir": str(lora_folder)})


@pytest.fixture(scope="module")
def torch_service(tmp_path_factory, tiny_model, lora_folder):
    with _service(tmp_path_factory, "torch", tiny_model, lora_folder, engine="torch") as running:
        yield running


@pytest.fixture(scope="module")
def onnx_service(tmp_path_factory, tiny_model, lora_folder, plain_export):
    with _service(tmp_path_factory, "onnx", tiny_model, lora_folder, onnx_path=str(plain_export)) as running:
        yield running


@pytest.fixture(scope="module")
def merged_service(tmp_path_factory, tiny_model, lora_folder, merged_export):
    with _service(tmp_path_factory, "merged", tiny_model, lora_folder, onnx_path=str(merged_export)) as running:
        yield running


def _run(service, **body):
    with service.client() as client:
        result = generate(client, **{"prompt": "a harbour at night", "seed": 7, **body})
    assert result["status"] == "completed", result
    return result


def _pixels(result, index=None):
    return fetch_pixels(result["result_url"] if index is None else result["result_urls"][index])


# -- the export ------------------------------------------------------------------------------------------------


# -- serving and routing ---------------------------------------------------------------------------------------


def test_health_shows_the_engine_and_providers(onnx_service):
    health = httpx.get(onnx_service.url + "/health").json()
    assert health["status"] == "ok" and health["model_loaded"] is True
    assert health["engine"] == "auto" and health["providers"] == ["CPUExecutionProvider"]


def test_requests_route_by_their_lora_set(onnx_service, merged_service):
    assert _run(onnx_service)["engine"] == "onnx"
    assert _run(onnx_service, loras=[{"name": "style_lora"}])["engine"] == "torch"  # lazily loaded fallback
    assert _run(merged_service)["engine"] == "torch"
    exact = [{"name": "style_lokr", "weight": -0.5}, {"name": "style_loha", "weight": 0.8}]
    assert _run(merged_service, loras=exact)["engine"] == "onnx"
    assert _run(merged_service, loras=[{"name": "style_loha", "weight": 0.8}])["engine"] == "torch"


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_onnx_and_torch_agree_for_every_scheduler(onnx_service, torch_service, scheduler):
    onnx = _run(onnx_service, scheduler=scheduler, num_images=2)
    reference = _run(torch_service, scheduler=scheduler, num_images=2)
    assert onnx["engine"] == "onnx" and reference["engine"] == "torch"
    for k in range(2):
        assert mean_abs_diff(_pixels(onnx, k), _pixels(reference, k)) <= PARITY


def test_onnx_and_torch_agree_for_image_to_image(onnx_service, torch_service):
    init = data_url(gradient_image(130, 100), "JPEG")  # output 128x96: sides the export takes (multiples of 32)
    for strength in (0.4, 0.9):
        onnx = _run(onnx_service, init_image=init, strength=strength)
        reference = _run(torch_service, init_image=init, strength=strength)
        assert onnx["engine"] == "onnx"
        assert fetch_image(onnx["result_url"]).size == (128, 96)
        assert mean_abs_diff(_pixels(onnx), _pixels(reference)) <= PARITY


def test_sizes_the_export_cannot_take_run_on_torch(onnx_service):
    result = _run(onnx_service, init_image=data_url(gradient_image(120, 88)), strength=0.5)
    assert result["engine"] == "torch" and fetch_image(result["result_url"]).size == (120, 88)
    assert _run(onnx_service, width=72, height=64)["engine"] == "torch"


def test_a_merged_export_matches_the_lora_applied_at_run_time(merged_service, torch_service):
    loras = [{"name": "style_loha", "weight": 0.8}, {"name": "style_lokr", "weight": -0.5}]
    baked = _run(merged_service, loras=loras)
    applied = _run(torch_service, loras=loras)
    plain = _run(torch_service)
    assert baked["engine"] == "onnx" and applied["engine"] == "torch"
    assert mean_abs_diff(_pixels(baked), _pixels(applied)) <= PARITY
    assert mean_abs_diff(_pixels(baked), _pixels(plain)) > 1.0  # the LoRAs really are in the export


def test_onnx_batches_formats_and_the_seed_rule(onnx_service):
    batch = _run(onnx_service, num_images=10, output_format="jpeg", width=64, height=64, seed=100)
    assert batch["engine"] == "onnx" and len(batch["result_urls"]) == 10
    assert all(fetch_image(url).format == "JPEG" for url in batch["result_urls"])
    png = _run(onnx_service, num_images=3, seed=200)
    for k in range(3):
        single = _run(onnx_service, seed=200 + k)
        assert mean_abs_diff(_pixels(png, k), _pixels(single)) <= 1.0


def test_prompts_naming_an_embedding_run_on_torch(onnx_service, torch_service):
    """The export's text encoder has a fixed vocabulary: such a prompt runs on torch, which says so in `engine`.
    The file arrives after start-up: the refresh finds it, the worker reads it on first use."""
    results = []
    for service in (onnx_service, torch_service):
        write_a1111_safetensors(service.config.embeddings_path / "late-style.safetensors", vectors(2, 32, seed=8))
        with service.client() as client:
            assert "late-style" in {e["name"] for e in client.post("/api/v1/embeddings/refresh").json()["embeddings"]}
        results.append(_run(service, prompt="a harbour at night, late-style"))
    routed, reference = results
    assert routed["engine"] == "torch" and routed["embeddings"] == ["late-style"]
    assert mean_abs_diff(_pixels(routed), _pixels(reference)) == 0.0
    assert _run(onnx_service)["engine"] == "onnx"  # the next plain prompt goes back to the export


def _masked_body(size=64, **extra):
    from PIL import Image

    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (16, 16, 48, 48))
    return {"init_image": data_url(gradient_image(size, size)), "mask_image": data_url(mask), "strength": 0.8} | extra


@pytest.mark.parametrize("area", ["whole", "masked"])
def test_inpainting_runs_on_the_export_and_matches_torch(onnx_service, torch_service, area):
    body = _masked_body(inpaint_area=area, inpaint_padding=8)
    onnx, reference = _run(onnx_service, **body), _run(torch_service, **body)
    assert onnx["engine"] == "onnx" and reference["engine"] == "torch"
    assert mean_abs_diff(_pixels(onnx), _pixels(reference)) <= PARITY


def test_an_inpainting_checkpoints_export_serves_every_mode(tmp_path_factory, tiny_sd15_inpaint, inpaint_export):
    exported = in_process(
        tmp_path_factory.mktemp("inpaint-onnx"), tiny_sd15_inpaint, model={**FP32, "onnx_path": str(inpaint_export)}
    )
    on_torch = in_process(
        tmp_path_factory.mktemp("inpaint-torch"), tiny_sd15_inpaint, model={**FP32, "engine": "torch"}
    )
    with exported as onnx_service, on_torch as torch_service:
        masked = _masked_body()
        onnx, reference = _run(onnx_service, **masked), _run(torch_service, **masked)
        assert onnx["engine"] == "onnx" and mean_abs_diff(_pixels(onnx), _pixels(reference)) <= PARITY
        # Text- and image-to-image repaint everything (a full mask): the export serves them too. With nothing of
        # the picture kept, ONNX Runtime's and torch's rounding differences grow through this random model's
        # steps (measured 0.6 and 1.2 mean, 6 and 15 at most), so these are compared more loosely.
        for body in ({"width": 64, "height": 64}, {"init_image": data_url(gradient_image(64, 64))}):
            onnx, reference = _run(onnx_service, **body), _run(torch_service, **body)
            assert onnx["engine"] == "onnx" and _pixels(onnx).shape == (64, 64, 3), body.keys()
            assert mean_abs_diff(_pixels(onnx), _pixels(reference)) <= 3 * PARITY, body.keys()


def test_controlnet_units_run_on_torch_and_say_so(onnx_service, tiny_model):
    from tests.support.controlnet_files import tiny_controlnet, write_controlnet

    write_controlnet(onnx_service.config.controlnet_path / "tiny-edges", tiny_controlnet(tiny_model, seed=1))
    with onnx_service.client() as client:
        client.post("/api/v1/controlnets/refresh")
    unit = {"model": "tiny-edges", "image": data_url(gradient_image(64, 64))}
    assert _run(onnx_service, controlnets=[unit])["engine"] == "torch"


def test_engine_onnx_refuses_other_lora_sets_at_submit(tmp_path, tiny_model, lora_folder, merged_export):
    model = {**FP32, "engine": "onnx", "onnx_path": str(merged_export)}
    (tmp_path / "data" / "embeddings").mkdir(parents=True)
    write_a1111_safetensors(tmp_path / "data" / "embeddings" / "some-style.safetensors", vectors(1, 32, seed=1))
    with in_process(tmp_path, tiny_model, model=model, loras={"dir": str(lora_folder)}) as service:
        with service.client() as client:
            named = client.post("/api/v1/generate", json={"prompt": "by some-style"})
            assert named.status_code == 400 and "textual inversion" in named.json()["detail"]
            response = client.post("/api/v1/generate", json={"prompt": "x", "loras": [{"name": "style_lora"}]})
            assert response.status_code == 400
            assert "style_loha:0.8" in response.json()["detail"]
            exact = [{"name": "style_loha", "weight": 0.8}, {"name": "style_lokr", "weight": -0.5}]
            odd = client.post("/api/v1/generate", json={"prompt": "x", "loras": exact, "width": 72})
            assert odd.status_code == 400 and "32" in odd.json()["detail"]
        assert _run(service, loras=exact)["engine"] == "onnx"


def test_a_missing_export_is_reported_by_health(tmp_path, tiny_model):
    with in_process(tmp_path, tiny_model, model={"onnx_path": str(tmp_path / "nothing")}) as service:
        health = httpx.get(service.url + "/health").json()
        assert health["model_loaded"] is False and "export.json" in health["model_error"]


class FailingOnnx(OnnxEngine):
    def generate(self, run):
        if run.params.prompt == "onnx-crash":
            raise GenerationFailed("ONNX 推理失败：RuntimeException")
        return super().generate(run)


@pytest.mark.parametrize("fallback", [True, False])
def test_an_onnx_failure_fails_the_task_or_falls_back_to_torch(tmp_path, tiny_model, plain_export, fallback):
    config = load_config(write_config(tmp_path, tiny_model, model={**FP32, "onnx_path": str(plain_export)}))
    onnx = FailingOnnx(config.model, OnnxConfig(), tmp_path / "trt")
    router = EngineRouter(
        onnx,
        lambda: TorchEngine(ModelConfig(path=str(tiny_model), device="cpu", dtype="float32")),
        prefer=True,
        fallback_on_failure=fallback,
    )
    with InProcessService(config, engine=router) as service:
        service.wait_ready()
        with service.client() as client:
            result = generate(client, prompt="onnx-crash")
            if fallback:
                assert result["status"] == "completed" and result["engine"] == "torch"
            else:
                assert result["status"] == "failed" and "ONNX" in result["error_message"]
            assert generate(client, prompt="fine")["engine"] == "onnx"


def test_a_running_onnx_task_stops_between_steps_when_cancelled(onnx_service):
    request = {"prompt": "a long onnx run", "width": 512, "height": 512, "num_inference_steps": 150}
    with onnx_service.client() as client:
        task_id = submit(client, **request, scheduler="EulerDiscreteScheduler", seed=2)
        deadline = time.monotonic() + 60
        while (client.get(f"/api/v1/tasks/{task_id}").json()["progress"] or {}).get("step", 0) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
        body = wait_for_task(client, task_id)
    assert body["status"] == "failed" and body["error_code"] == "cancelled"
    assert 2 <= body["progress"]["step"] < body["progress"]["total_steps"] == 150
