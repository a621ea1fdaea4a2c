"""MinIO storage against a real S3 HTTP server on loopback (moto's), through the official minio SDK."""

from __future__ import annotations

import io
import re

import httpx
from minio import Minio
from moto.server import ThreadedMotoServer
from PIL import Image

from tests.receivers import PresignGateway
from tests.support.services import free_port, generate, in_process
from tests.support.waiting import eventually

ACCESS_KEY = "sdapi-test-access"
SECRET_KEY = "sdapi-test-secret-do-not-leak"


def _minio(s3, **changes):
    settings = {
        "endpoint": s3["endpoint"],
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "bucket": "sd-images",
        "prefix": "gen/",
    }
    settings.update(changes)
    return {"backend": "minio", "minio": settings, "upload_attempts": 2, "retry_backoff_seconds": 0.1}


def _client(s3):
    return Minio(s3["endpoint"], access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, region="us-east-1")


def test_public_urls_serve_exactly_the_stored_bytes(tmp_path, tiny_model, s3):
    with in_process(tmp_path, tiny_model, storage=_minio(s3, bucket="created-on-start")) as service:
        assert _client(s3).bucket_exists("created-on-start")  # the start-up check created it
        with service.client() as client:
            assert client.get("/health").json()["storage"] == "ok"
            body = generate(client, prompt="a cat", seed=1, num_images=2)
            assert body["status"] == "completed", body
            for url in body["result_urls"]:
                match = re.fullmatch(rf"http://{s3['endpoint']}/created-on-start/(gen/[A-Za-z0-9_-]{{32}}\.png)", url)
                assert match, url
                served = httpx.get(url)
                assert served.status_code == 200
                stored = _client(s3).get_object("created-on-start", match[1]).read()
                assert served.content == stored
                assert Image.open(io.BytesIO(stored)).size == (128, 96)
                assert _client(s3).stat_object("created-on-start", match[1]).content_type == "image/png"


def test_jpeg_objects_get_their_content_type(tmp_path, tiny_model, s3):
    with in_process(tmp_path, tiny_model, storage=_minio(s3)) as service, service.client() as client:
        body = generate(client, prompt="a cat", output_format="jpg")
        assert httpx.get(body["result_url"]).headers["content-type"] == "image/jpeg"


def test_public_base_url_replaces_the_endpoint_in_urls(tmp_path, tiny_model, s3):
    storage = _minio(s3, public_base_url="https://img.example.com/")
    with in_process(tmp_path, tiny_model, storage=storage) as service, service.client() as client:
        body = generate(client, prompt="a cat")
        assert body["result_url"].startswith("https://img.example.com/sd-images/gen/")


def test_presigned_urls_work_until_their_ttl_and_are_signed_anew_on_each_read(tmp_path, tiny_model, s3):
    with PresignGateway(f"http://{s3['endpoint']}", SECRET_KEY) as gateway:
        storage = _minio(s3, url_mode="presigned", presign_ttl=2, public_base_url=gateway.url)
        with in_process(tmp_path, tiny_model, storage=storage) as service, service.client() as client:
            body = generate(client, prompt="a cat", seed=3)
            url = body["result_url"]
            assert url.startswith(gateway.url) and "X-Amz-Expires=2" in url
            fresh = httpx.get(url)
            assert fresh.status_code == 200 and fresh.headers["content-type"] == "image/png"
            tampered = url.replace("gen%2F", "gen%2Fx") if "gen%2F" in url else url.replace("/gen/", "/gen/x")
            assert httpx.get(tampered).status_code == 403
            eventually(lambda: httpx.get(url).status_code == 403, what="the presigned URL's expiry")
            expired = httpx.get(url)
            assert expired.status_code == 403 and "expired" in expired.text
            reread = client.get(f"/api/v1/tasks/{body['task_id']}").json()["result_url"]
            assert reread != url
            again = httpx.get(reread)
            assert again.status_code == 200 and again.content == fresh.content


def test_storage_down_fails_the_task_clearly_and_the_next_one_succeeds(tmp_path, tiny_model, s3):
    port = free_port()
    flaky = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    flaky.start()
    storage = _minio({"endpoint": f"127.0.0.1:{port}"}, timeout_seconds=2)
    with in_process(tmp_path, tiny_model, storage=storage) as service, service.client() as client:
        flaky.stop()
        failed = generate(client, prompt="a cat")
        assert failed["status"] == "failed"
        assert "图片存储失败" in failed["error_message"] and f"127.0.0.1:{port}" in failed["error_message"]
        assert failed["error_code"] == "storage_unavailable"
        assert SECRET_KEY not in failed["error_message"] and ACCESS_KEY not in failed["error_message"]
        assert client.get("/health").json()["storage"] == failed["error_message"]
        flaky = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        flaky.start()
        try:
            recovered = generate(client, prompt="a cat")
            assert recovered["status"] == "completed", recovered
            assert httpx.get(recovered["result_url"]).status_code == 200
            assert client.get("/health").json()["storage"] == "ok"
        finally:
            flaky.stop()


def test_storage_down_at_start_up_keeps_the_service_up(tmp_path, tiny_model):
    storage = _minio({"endpoint": f"127.0.0.1:{free_port()}"}, timeout_seconds=1)
    with in_process(tmp_path, tiny_model, storage=storage) as service:
        health = httpx.get(service.url + "/health").json()
        assert health["status"] == "ok" and health["model_loaded"] is True
        assert "无法连接" in health["storage"]
