"""A failed generation is a result, not an outage: readable error_message, and the worker goes on."""

from __future__ import annotations

import threading

import httpx
import torch

from sdapi.config import ModelConfig
from sdapi.engines.torch_engine import TorchEngine
from tests.support.services import fetch_image, generate, in_process, submit, wait_for_task


class FaultyTorchEngine(TorchEngine):
    """The real torch engine, made to hit the faults a GPU deployment meets, chosen by prompt."""

    def _generate(self, run):
        if run.params.prompt == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if run.params.prompt == "crash":
            raise RuntimeError("illegal memory access at 0xdeadbeef")
        return super()._generate(run)


def test_out_of_memory_and_crashes_fail_the_task_and_the_worker_goes_on(tmp_path, tiny_model):
    engine = FaultyTorchEngine(ModelConfig(path=str(tiny_model), device="cpu"))
    with in_process(tmp_path, tiny_model, engine=engine) as service, service.client() as client:
        oom = generate(client, prompt="oom", width=256, height=256, num_images=2)
        assert oom["status"] == "failed"
        assert "不足" in oom["error_message"] and "256x256" in oom["error_message"]
        assert oom["error_code"] == "out_of_memory"
        second_pass = generate(client, prompt="oom", width=128, height=128, hires={"scale": 3})
        assert (
            second_pass["error_code"] == "out_of_memory" and "384x384（高分辨率第二遍）" in second_pass["error_message"]
        )
        crash = generate(client, prompt="crash")
        assert crash["status"] == "failed"
        assert crash["error_message"] == "生成过程中发生错误"  # no internals in the user-facing message
        assert "0xdeadbeef" not in crash["error_message"]
        assert crash["error_code"] == "internal"
        fine = generate(client, prompt="a cat")
        assert fine["status"] == "completed"
        assert fetch_image(fine["result_url"]).size == (128, 96)


def test_a_missing_model_fails_tasks_with_a_clear_message_and_health_says_so(tmp_path):
    missing = tmp_path / "no-such-model"
    with in_process(tmp_path, missing) as service, service.client() as client:
        health = httpx.get(service.url + "/health").json()
        assert health["status"] == "ok"
        assert health["model_loaded"] is False
        assert str(missing) in health["model_error"]
        body = generate(client, prompt="a cat")
        assert body["status"] == "failed"
        assert str(missing) in body["error_message"]
        assert body["error_code"] == "model_not_loaded"


class SlowLoadingEngine(TorchEngine):
    """Loads only when the test says so, to observe the service while the model is loading."""

    def __init__(self, model):
        super().__init__(model)
        self.release = threading.Event()

    def load(self):
        assert self.release.wait(60)
        super().load()


def test_health_answers_while_the_model_loads_and_tasks_wait_for_it(tmp_path, tiny_model):
    engine = SlowLoadingEngine(ModelConfig(path=str(tiny_model), device="cpu"))
    config_dir = tmp_path
    from sdapi.config import load_config
    from tests.support.services import InProcessService, write_config

    config = load_config(write_config(config_dir, tiny_model))
    with InProcessService(config, engine=engine) as service, service.client() as client:
        health = httpx.get(service.url + "/health", timeout=2.0).json()
        assert health == {**health, "status": "ok", "model_loaded": False, "model_error": None}
        task_id = submit(client, prompt="a cat")
        assert client.get(f"/api/v1/tasks/{task_id}").json()["status"] == "pending"
        engine.release.set()
        assert wait_for_task(client, task_id)["status"] == "completed"
        assert httpx.get(service.url + "/health").json()["model_loaded"] is True


def test_a_missing_single_file_checkpoint_is_named_in_health(tmp_path):
    missing = tmp_path / "v1-5-pruned-emaonly.safetensors"
    with in_process(tmp_path, missing) as service:
        health = httpx.get(service.url + "/health").json()
        assert health["model_loaded"] is False
        assert "模型文件不存在" in health["model_error"] and str(missing) in health["model_error"]
