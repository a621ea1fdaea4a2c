"""The seed API document's endpoints and shapes, exactly, over real HTTP."""

from __future__ import annotations

import re
from datetime import datetime

import httpx
import pytest

from tests.support.services import API_KEY, fetch_image, generate, submit, wait_for_task

TASK_FIELDS = {"task_id", "status", "result_url", "result_urls", "error_message", "created_at", "updated_at"}


@pytest.mark.parametrize("path", ["/health", "/api/health"])
def test_health_needs_no_key_and_has_the_seed_fields(service, path):
    response = httpx.get(service.url + path)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["model_loaded"] is True
    assert body["engine"] == "torch"
    assert body["storage"] == "ok"


def test_generate_answers_pending_with_the_seed_message(client):
    response = client.post("/api/v1/generate", json={"prompt": "a cat", "seed": 3})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"task_id", "status", "message"}
    assert body["status"] == "pending"
    assert body["message"] == "任务已创建，正在处理中"
    assert re.fullmatch(r"[0-9a-f-]{36}", body["task_id"])
    wait_for_task(client, body["task_id"])


def test_one_image_sets_result_url_and_nulls_result_urls(client):
    body = generate(client, prompt="a cat", seed=5)
    assert set(body) >= TASK_FIELDS
    assert body["status"] == "completed"
    assert body["result_urls"] is None
    assert body["error_message"] is None
    assert body["result_url"].startswith("http://127.0.0.1:")
    image = fetch_image(body["result_url"])
    assert image.format == "PNG"
    assert image.size == (128, 96)  # the config's defaults.width/height


def test_several_images_set_result_urls_and_null_result_url(client):
    body = generate(client, prompt="a cat", seed=5, num_images=3)
    assert body["status"] == "completed"
    assert body["result_url"] is None
    assert len(body["result_urls"]) == 3
    assert len(set(body["result_urls"])) == 3
    for url in body["result_urls"]:
        assert fetch_image(url).size == (128, 96)


def test_timestamps_are_iso_8601_and_move_with_the_status(client):
    task_id = submit(client, prompt="a cat", seed=7)
    first = client.get(f"/api/v1/tasks/{task_id}").json()
    done = wait_for_task(client, task_id)
    created = datetime.fromisoformat(done["created_at"])
    updated = datetime.fromisoformat(done["updated_at"])
    assert created.tzinfo is not None
    assert first["created_at"] == done["created_at"]
    assert updated > created


def test_pending_and_processing_tasks_have_no_urls(client):
    task_id = submit(client, prompt="a cat", seed=8, num_inference_steps=30, width=256, height=256)
    body = client.get(f"/api/v1/tasks/{task_id}").json()
    assert body["status"] in ("pending", "processing")
    assert body["result_url"] is None and body["result_urls"] is None
    wait_for_task(client, task_id)


def test_unknown_task_is_404_with_the_seed_detail(client):
    response = client.get("/api/v1/tasks/550e8400-e29b-41d4-a716-446655440000")
    assert response.status_code == 404
    assert response.json() == {"detail": "任务不存在"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/v1/generate"), ("GET", "/api/v1/tasks/550e8400-e29b-41d4-a716-446655440000")],
)
@pytest.mark.parametrize("key", [None, "", "wrong-key", API_KEY + "x", API_KEY[:-1]])
def test_missing_or_unknown_key_is_401(service, method, path, key):
    headers = {} if key is None else {"X-API-Key": key}
    response = httpx.request(method, service.url + path, headers=headers, json={"prompt": "a cat"})
    assert response.status_code == 401
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "API Key" in detail


def test_auth_comes_before_body_validation(service):
    response = httpx.post(service.url + "/api/v1/generate", json={})
    assert response.status_code == 401


def test_result_images_are_public_but_unguessable(client):
    body = generate(client, prompt="a cat", seed=9)
    name = body["result_url"].rsplit("/", 1)[1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}\.png", name)
    assert httpx.get(body["result_url"]).status_code == 200  # no key needed, as the seed's MinIO URLs
    base = body["result_url"].rsplit("/", 1)[0]
    for probe in ["nope.png", "..%2Fsdapi.sqlite3", "%2E%2E/config.yaml", name.replace(".png", ".jpg")]:
        assert httpx.get(f"{base}/{probe}").status_code == 404


def test_unknown_route_is_404_in_the_seed_shape(service):
    response = httpx.get(service.url + "/api/v1/nothing-here", headers={"X-API-Key": API_KEY})
    assert response.status_code == 404
    assert set(response.json()) == {"detail"}


def test_swagger_and_redoc_render_without_internet(service):
    for page in ["/docs", "/redoc"]:
        response = httpx.get(service.url + page)
        assert response.status_code == 200
        assert "text/html" in response.headers["content-type"]
        assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", response.text)
        assert assets, page
        for asset in assets:
            assert asset.startswith("/docs-assets/"), f"{page} loads {asset} from outside the service"
            fetched = httpx.get(service.url + asset)
            assert fetched.status_code == 200, asset
            assert len(fetched.content) > 500
        assert "googleapis" not in response.text and "cdn" not in response.text.lower()


def test_openapi_schema_describes_every_field(service):
    schema = httpx.get(service.url + "/openapi.json").json()
    assert {"/health", "/api/health", "/api/v1/generate", "/api/v1/tasks/{task_id}"} <= set(schema["paths"])
    components = schema["components"]["schemas"]
    request = next(value for name, value in components.items() if name.endswith("GenerationRequest"))
    expected = {
        "prompt",
        "init_image",
        "negative_prompt",
        "width",
        "height",
        "num_images",
        "num_inference_steps",
        "guidance_scale",
        "strength",
        "scheduler",
        "seed",
        "output_format",
        "callback_url",
    }
    assert expected <= set(request["properties"])
    assert request["required"] == ["prompt"]
    for name in ["GenerateResponse", "TaskResponse", "HealthResponse", "GenerationRequest"]:
        struct = next(value for key, value in components.items() if key.endswith(name))
        for field, definition in struct["properties"].items():
            described = definition.get("description") or any(
                option.get("description") for option in definition.get("oneOf", [])
            )
            assert described, f"{name}.{field} has no description"
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"


def test_documented_errors_have_the_bodies_the_service_answers(service, client):
    schema = httpx.get(service.url + "/openapi.json").json()

    def body_schema(path: str, method: str, status: str) -> dict:
        content = schema["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        ref = content["$ref"].rsplit("/", 1)[-1]
        return schema["components"]["schemas"][ref]

    # The native API's 400 is the contract's {"detail": "..."}, not Litestar's {"status_code", "detail", "extra"}.
    native = body_schema("/api/v1/tasks/{task_id}", "get", "400")
    assert set(native["properties"]) == {"detail"}
    answered = client.get("/api/v1/tasks/x", params={"wait": "soon"})
    assert answered.status_code == 400 and set(answered.json()) == {"detail"}
    for path, method in [("/v1/images/generations", "post"), ("/v1/models", "get")]:
        assert set(body_schema(path, method, "401")["properties"]) == {"error"}
    for path, method in [("/sdapi/v1/txt2img", "post"), ("/sdapi/v1/sd-models", "get")]:
        assert set(body_schema(path, method, "401")["properties"]) == {"error", "detail", "body", "errors"}
    assert {"400", "401", "413", "422", "429", "503"} <= set(schema["paths"]["/api/v1/generate"]["post"]["responses"])
    # An optional field keeps its bounds in the schema (Litestar drops them from the non-null branch).
    width = schema["components"]["schemas"]["GenerationRequest"]["properties"]["width"]
    assert {"type": "integer", "exclusiveMinimum": 0} in width["oneOf"]


def test_options_allow_lists_every_method_of_the_path(client):
    for path, methods in [
        ("/api/v1/tasks/some-task", {"GET", "DELETE", "OPTIONS"}),
        ("/sdapi/v1/options", {"GET", "POST", "OPTIONS"}),
        ("/api/v1/generate", {"POST", "OPTIONS"}),
    ]:
        answered = client.options(path, auth=("any", client.headers["X-API-Key"]))
        assert answered.status_code == 204, path
        assert set(answered.headers["allow"].split(", ")) == methods, path


def test_a_whole_float_is_an_integer_and_a_fraction_is_refused(client):
    """JSON does not tell 64 from 64.0 (nor does JSON Schema): Python clients send `128 / 2` as 64.0."""
    created = client.post("/api/v1/generate", json={"prompt": "a lake", "width": 64.0, "num_inference_steps": 2.0})
    assert created.status_code == 200, created.text
    task = wait_for_task(client, created.json()["task_id"])
    assert task["status"] == "completed"
    assert fetch_image(task["result_url"]).size[0] == 64
    refused = client.post("/api/v1/generate", json={"prompt": "a lake", "width": 64.5})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "width"]
