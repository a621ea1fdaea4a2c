"""An API node (`sdapi serve --role api`) refuses exactly what `sdapi serve` refuses: both run the same request
checks from the config and the model files, never from a loaded engine. Two real processes on one PostgreSQL
database (and one data_dir), three models (an SD 1.5 default, an SD 2.x model, an ONNX-only export), LoRA files
that fit one model and not another."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from export.exporter import export_model
from tests.support.adapter_files import model_modules, write_adapter, write_wrong_shapes
from tests.support.services import ServiceProcess, data_url, gradient_image, submit, wait_for_task, write_config
from tests.support.upscaler_files import tiny_rrdb, write_rrdb

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SMALL = {"prompt": "parity", "width": 64, "height": 64, "num_inference_steps": 2}

# Each is refused at submit by a step that used to need a loaded engine, or that an API node skipped.
BAD_REQUESTS = {
    "a LoRA that does not fit the default model": {**SMALL, "loras": [{"name": "wrong_shapes", "weight": 1}]},
    "a LoRA that does not fit the SD 2.x model (not the default)": {
        **SMALL,
        "model": "sd2",
        "loras": [{"name": "wrong_shapes", "weight": 1}],
    },
    "a size the ONNX-only export cannot take": {**SMALL, "model": "onnx", "width": 200},
    "a LoRA set the ONNX-only export did not merge": {
        **SMALL,
        "model": "onnx",
        "loras": [{"name": "sd15_style", "weight": 1}],
    },
    "Karras sigmas on the model's own scheduler (PNDM)": {**SMALL, "use_karras_sigmas": True},
    "an option the model's own scheduler does not take": {**SMALL, "scheduler_options": {"solver_order": 2}},
    "a solver order of 10^12": {
        **SMALL,
        "scheduler": "DPMSolverMultistepScheduler",
        "scheduler_options": {"solver_order": 10**12},
    },
    "an unknown prediction type": {**SMALL, "scheduler": "DDIMScheduler", "scheduler_options": {"prediction_type": 5}},
}


@pytest.fixture(scope="module")
def two_roles(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_sd2v: Path, postgres
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    root = tmp_path_factory.mktemp("parity")
    loras = root / "loras"
    loras.mkdir()
    modules = model_modules(tiny_model)
    write_adapter(loras / "sd15_style.safetensors", modules, "lora", seed=1)
    write_wrong_shapes(loras / "wrong_shapes.safetensors", modules)
    upscalers = root / "upscalers"
    upscalers.mkdir()
    write_rrdb(upscalers / "tiny-esrgan-4x.pth", tiny_rrdb(scale=4, seed=1))
    export = root / "tiny-onnx"
    export_model(str(tiny_model), export, [], progress=None)
    config = write_config(
        root,
        tiny_model,
        models=[
            {"name": "default", "path": str(tiny_model), "default": True},
            {"name": "sd2", "path": str(tiny_sd2v)},
            {"name": "onnx", "path": str(tiny_model), "onnx_path": str(export), "engine": "onnx"},
        ],
        store={"backend": "postgres", "postgres": {"dsn": postgres.new_database()}},
        loras={"dir": str(loras)},
        upscalers={"dir": str(upscalers)},
    )
    with ServiceProcess(config) as serve, ServiceProcess(config, role="api") as api:
        serve.wait_ready()
        api.wait_ready()
        yield api, serve


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_both_roles_give_the_same_400(two_roles, case):
    api, serve = two_roles
    answers = []
    for node in (api, serve):
        with node.client() as client:
            answers.append(client.post("/api/v1/generate", json=BAD_REQUESTS[case]))
    on_api, on_serve = answers
    assert on_serve.status_code == 400, on_serve.text
    assert on_api.status_code == 400, on_api.text
    assert on_api.json() == on_serve.json()


def test_what_both_accept_runs_on_the_worker(two_roles):
    api, _ = two_roles
    with api.client() as client:
        body = wait_for_task(client, submit(client, **SMALL, loras=[{"name": "sd15_style", "weight": 0.5}]))
        assert body["status"] == "completed", body
        loras = client.get("/api/v1/loras").json()["loras"]
    # The API node decided the fits from the model's files: the same answer a loaded model gives.
    fits = {entry["name"]: entry["fits"] for entry in loras}
    assert fits == {"sd15_style": True, "wrong_shapes": False}
    assert httpx.get(body["result_url"]).status_code == 200


def test_an_api_node_runs_the_extras_itself(two_roles):
    """Upscaling a client's picture (A1111's extras) is no task: the API node answers it in its own process, loading
    the neural upscaler (and torch) on first use, as the README's roles section says."""
    api, _ = two_roles
    picture = data_url(gradient_image(16, 16))
    with api.client() as client:
        answer = client.post(
            "/sdapi/v1/extra-single-image",
            json={"image": picture, "upscaler_1": "tiny-esrgan-4x", "upscaling_resize": 4},
            timeout=120,
        )
    assert answer.status_code == 200, answer.text
    image = answer.json()["image"]
    assert Image.open(io.BytesIO(base64.b64decode(image.split(",")[-1]))).size == (64, 64)
