"""What an operator sees: /metrics (parsed with prometheus-client's own parser) moving as tasks run and fail, and
log lines that carry task and request ids from the API through the worker to the callback."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.receivers import CallbackReceiver
from tests.support.adapter_files import model_modules, write_adapter
from tests.support.services import (
    API_KEY,
    REPO_ROOT,
    ServiceProcess,
    free_port,
    in_process,
    wait_for_task,
    write_config,
)
from tests.support.waiting import eventually

LOOPBACK = {"allowed_hosts": ["127.0.0.1"], "backoff_base": 0.2, "timeout": 2.0}
SECRET = "whsec_" + "c2VjcmV0LWZvci1vYnNlcnZhYmlsaXR5LXRlc3Q="
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FAST = {"width": 64, "height": 64, "num_inference_steps": 2}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory, tiny_model):
    loras = tmp_path_factory.mktemp("metrics-loras")
    write_adapter(loras / "ink.safetensors", model_modules(tiny_model), "lora", seed=2)
    return make_service("metrics", callbacks=LOOPBACK, loras={"dir": str(loras)})


def test_metrics_move_as_tasks_run_fail_and_call_back(service):
    before = scrape(service.url)
    with CallbackReceiver() as receiver, service.client() as client:
        done = wait_for_task(
            client,
            client.post("/api/v1/generate", json={"prompt": "a", **FAST, "callback_url": receiver.url}).json()[
                "task_id"
            ],
        )
        assert done["status"] == "completed"
        receiver.wait_for(1)
        for loras in ([{"name": "ink"}], [], [{"name": "ink"}]):  # the second use of ink is a cache hit
            wait_for_task(
                client, client.post("/api/v1/generate", json={"prompt": "b", **FAST, "loras": loras}).json()["task_id"]
            )
        slow = client.post(
            "/api/v1/generate", json={"prompt": "c", "num_inference_steps": 150, "width": 512, "height": 512}
        ).json()
        client.post(f"/api/v1/tasks/{slow['task_id']}/cancel")
        assert wait_for_task(client, slow["task_id"])["error_code"] == "cancelled"
    openai.OpenAI(base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0).images.generate(
        prompt="d", size="64x64", extra_body={"num_inference_steps": 2}
    )
    after = scrape(service.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("sdapi_tasks_submitted_total", dialect="native") == 5
    assert moved("sdapi_tasks_submitted_total", dialect="openai") == 1
    assert moved("sdapi_tasks_completed_total", dialect="native", engine="torch") == 4
    assert moved("sdapi_tasks_completed_total", dialect="openai", engine="torch") == 1
    assert moved("sdapi_tasks_failed_total", dialect="native", error_code="cancelled") == 1
    assert moved("sdapi_queue_wait_seconds_count") >= 5
    assert moved("sdapi_task_run_seconds_count", engine="torch", model="default", size_class="le_512") == 5
    assert moved("sdapi_denoise_step_seconds_count", engine="torch") == 5
    assert moved("sdapi_image_encode_seconds_count", format="png") == 5
    assert moved("sdapi_image_upload_seconds_count") == 5
    assert moved("sdapi_callback_attempts_total", outcome="delivered") == 1
    assert moved("sdapi_callback_delivery_latency_seconds_count") == 1
    assert moved("sdapi_lora_cache_total", result="miss") == 1 and moved("sdapi_lora_cache_total", result="hit") == 1
    assert value(after, "sdapi_model_loads_total", engine="torch", outcome="loaded") >= 1
    assert value(after, "sdapi_queue_tasks", status="pending") == 0
    assert value(after, "sdapi_workers_alive") == 1
    assert value(after, "process_resident_memory_bytes") > 0
    # Label values stay bounded: no task id, no key, no prompt.
    for (name, labels), _ in after.items():
        for _label, text in labels:
            assert not UUID.search(text) and API_KEY not in text and text not in ("a", "b", "c", "d"), (name, labels)


def test_metrics_can_be_turned_off_or_moved_to_their_own_port(tmp_path, tiny_model):
    with in_process(tmp_path / "off", tiny_model, metrics={"enabled": False}) as off:
        assert httpx.get(f"{off.url}/metrics").status_code == 404
    port = free_port()
    with in_process(tmp_path / "port", tiny_model, metrics={"port": port}) as moved:
        assert httpx.get(f"{moved.url}/metrics").status_code == 404
        samples = scrape(f"http://127.0.0.1:{port}")
        assert ("sdapi_workers_alive", ()) in samples


def test_request_ids_are_echoed_and_generated(service):
    with service.client() as client:
        assert client.get("/health", headers={"X-Request-ID": "trace-7"}).headers["x-request-id"] == "trace-7"
        generated = client.get("/health").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        assert client.get("/nowhere").headers["x-request-id"]  # a 404 too
        refused = client.post("/api/v1/generate", json={}, headers={"X-Request-ID": "bad id\twith tab"})
        assert refused.status_code == 422 and re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"])


def test_json_logs_follow_one_request_from_api_to_worker_to_callback(tmp_path, tiny_model):
    config = write_config(
        tmp_path,
        tiny_model,
        log_format="json",
        callbacks={**LOOPBACK, "secret": SECRET},
    )
    with CallbackReceiver() as receiver, ServiceProcess(config) as process:
        process.wait_ready()
        with process.client() as client:
            created = client.post(
                "/api/v1/generate",
                json={"prompt": "a secret lighthouse prompt", **FAST, "callback_url": receiver.url},
                headers={"X-Request-ID": "req-follow-me"},
            )
            assert created.headers["x-request-id"] == "req-follow-me"
            task_id = created.json()["task_id"]
            finished = wait_for_task(client, task_id)
            assert finished["status"] == "completed" and finished["request_id"] == "req-follow-me"
        receiver.wait_for(1)
        # The delivery's log line follows the POST (the attempt is recorded, then logged).
        eventually(lambda: "sdapi.callbacks.sender" in process.log() and "delivered" in process.log(), what="its log")
        assert process.terminate()
    lines = [line for line in process.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"time", "level", "logger", "message", "task_id", "request_id"} <= set(entry) for entry in entries)
    about_task = [entry for entry in entries if entry["task_id"] == task_id]
    loggers = {entry["logger"] for entry in about_task}
    assert {"sdapi.service", "sdapi.worker", "sdapi.callbacks.sender"} <= loggers, about_task
    assert all(entry["request_id"] == "req-follow-me" for entry in about_task)
    assert any("delivered" in entry["message"] for entry in about_task if entry["logger"] == "sdapi.callbacks.sender")
    # Never in the logs: keys, the callback secret, prompts (log_prompts is off).
    text = process.log()
    assert API_KEY not in text and SECRET not in text and "secret lighthouse" not in text


def test_log_prompts_puts_prompts_in_the_task_line(tmp_path, tiny_model, caplog):
    with (
        in_process(tmp_path, tiny_model, log_prompts=True) as running,
        running.client() as client,
        caplog.at_level("INFO", logger="sdapi.service"),
    ):
        wait_for_task(client, client.post("/api/v1/generate", json={"prompt": "a tiny boat", **FAST}).json()["task_id"])
    assert any("a tiny boat" in record.getMessage() for record in caplog.records)


def test_the_grafana_dashboard_queries_only_metrics_sdapi_exports():
    from prometheus_client import REGISTRY

    import sdapi.observability.metrics  # noqa: F401  (declares the metrics)

    dashboard = json.loads((REPO_ROOT / "deploy" / "grafana" / "sdapi-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\b((?:sdapi|process)_[a-z_]+)", expr)}
    exported = set()
    for family in REGISTRY.collect():
        exported |= {family.name, *(family.name + suffix for suffix in ("_total", "_bucket", "_sum", "_count"))}
    assert used and used <= exported, used - exported
    assert {"sdapi_tasks_failed_total", "sdapi_queue_tasks", "sdapi_task_run_seconds_bucket"} <= used


def test_processes_sharing_a_multiprocess_dir_report_through_it(tmp_path, tiny_model):
    shared = tmp_path / "prometheus"
    shared.mkdir()
    config = write_config(tmp_path, tiny_model)
    with ServiceProcess(config, env={"PROMETHEUS_MULTIPROC_DIR": str(shared)}) as process:
        process.wait_ready()
        with process.client() as client:
            task_id = client.post("/api/v1/generate", json={"prompt": "x", **FAST}).json()["task_id"]
            assert wait_for_task(client, task_id)["status"] == "completed"
        samples = scrape(process.url)
    assert value(samples, "sdapi_tasks_completed_total", dialect="native", engine="torch") == 1
    assert value(samples, "sdapi_queue_tasks", status="pending") == 0
    assert any(shared.glob("counter_*.db"))  # the values live in the shared folder, where every process adds its own
