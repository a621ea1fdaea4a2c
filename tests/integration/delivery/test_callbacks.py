"""Callbacks: delivered as the contract's receiver reads them, signed, retried, resumed, and SSRF-safe.
Every receiver is a real HTTP server on loopback, allowed through config."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time

import httpx
import pytest
from flask import Flask, request
from werkzeug.serving import make_server

from sdapi.config import ModelConfig
from tests.integration.native_api.test_failures import FaultyTorchEngine
from tests.receivers import CallbackReceiver
from tests.support.services import ServiceProcess, in_process, submit, wait_for_task, write_config

LOOPBACK = {"allowed_hosts": ["127.0.0.1"], "backoff_base": 0.2, "timeout": 2.0}
SECRET = "whsec_" + base64.b64encode(b"a 32-byte secret for the tests!!").decode()


def _callback_state(client, task_id, until, timeout=30.0, attempts=None):
    """The task once its callback_status is one of `until` (and, when given, `attempts` have been recorded: the
    receiver sees a POST a moment before the sender records its outcome)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/tasks/{task_id}").json()
        if body["callback_status"] in until and attempts in (None, body["callback_attempts"]):
            return body
        time.sleep(0.05)
    raise TimeoutError(body)


class SeedFlaskReceiver:
    """The contract's Flask receiver example, unchanged but for recording what it printed."""

    def __init__(self):
        self.seen = []
        app = Flask(__name__)
        seen = self.seen

        @app.route("/api/callback", methods=["POST"])
        def callback():
            data = request.json
            task_id = data["task_id"]
            status = data["status"]

            if status == "completed":
                # 单张图片
                if "image_url" in data:
                    image_url = data["image_url"]
                    seen.append(("completed", task_id, image_url))
                # 多张图片
                elif "image_urls" in data:
                    image_urls = data["image_urls"]
                    seen.append(("completed", task_id, image_urls))
            elif status == "failed":
                error_message = data["error_message"]
                seen.append(("failed", task_id, error_message))

            return {"status": "ok"}

        self.server = make_server("127.0.0.1", 0, app)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count, timeout=30.0):
        deadline = time.monotonic() + timeout
        while len(self.seen) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.seen


def test_the_seed_flask_receiver_gets_single_multiple_and_failed_results(tmp_path, tiny_model):
    receiver = SeedFlaskReceiver()
    engine = FaultyTorchEngine(ModelConfig(path=str(tiny_model), device="cpu"))
    try:
        with in_process(tmp_path, tiny_model, engine=engine, callbacks=LOOPBACK) as service, service.client() as client:
            one = submit(client, prompt="a cat", callback_url=receiver.url)
            many = submit(client, prompt="a cat", num_images=2, callback_url=receiver.url)
            broken = submit(client, prompt="crash", callback_url=receiver.url)
            seen = {entry[1]: entry for entry in receiver.wait(3)}
            one_body, many_body = wait_for_task(client, one), wait_for_task(client, many)
            assert seen[one] == ("completed", one, one_body["result_url"])
            assert seen[many] == ("completed", many, many_body["result_urls"])
            assert seen[broken] == ("failed", broken, "生成过程中发生错误")
            for task_id in (one, many, broken):
                body = _callback_state(client, task_id, ("delivered",))
                assert body["callback_attempts"] == 1
            assert httpx.get(one_body["result_url"]).status_code == 200
    finally:
        receiver.server.shutdown()


def test_a_task_without_callback_url_shows_no_callback_state(client):
    body = wait_for_task(client, submit(client, prompt="a cat"))
    assert body["callback_status"] is None and body["callback_attempts"] is None


def test_headers_and_signature(tmp_path, tiny_model):
    with (
        CallbackReceiver() as receiver,
        in_process(tmp_path, tiny_model, callbacks={**LOOPBACK, "secret": SECRET}) as service,
        service.client() as client,
    ):
        task_id = submit(client, prompt="a cat", callback_url=receiver.url)
        (received,) = receiver.wait_for(1)
        headers, body = received.headers, received.body
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"].startswith("sdapi/")
        payload = json.loads(body)
        assert payload["task_id"] == task_id and payload["status"] == "completed" and "image_url" in payload
        # Verified independently of sdapi's own code, the way the README's receiver does it.
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        assert headers["webhook-signature"] == expected
        assert headers["webhook-id"].startswith("msg_")
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
        tampered = body.replace(b"completed", b"failed\x20\x20\x20")
        forged = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + tampered
        assert "v1," + base64.b64encode(hmac.new(key, forged, hashlib.sha256).digest()).decode() != expected


def test_500_500_200_gives_one_accepted_delivery_with_one_id(tmp_path, tiny_model):
    with (
        CallbackReceiver(script=[(500, 0), (500, 0), (200, 0)]) as receiver,
        in_process(tmp_path, tiny_model, callbacks=LOOPBACK) as service,
        service.client() as client,
    ):
        task_id = submit(client, prompt="a cat", callback_url=receiver.url)
        body = _callback_state(client, task_id, ("delivered", "failed"))
        assert body["callback_status"] == "delivered" and body["callback_attempts"] == 3
        time.sleep(1.0)  # nothing more arrives after the accepted one
        assert len(receiver.received) == 3
        assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
        assert body["status"] == "completed"


def test_a_hanging_receiver_is_retried_after_the_timeout(tmp_path, tiny_model):
    callbacks = {**LOOPBACK, "timeout": 0.5}
    with (
        CallbackReceiver(script=[(200, 3.0), (200, 0)]) as receiver,
        in_process(tmp_path, tiny_model, callbacks=callbacks) as service,
        service.client() as client,
    ):
        task_id = submit(client, prompt="a cat", callback_url=receiver.url)
        body = _callback_state(client, task_id, ("delivered", "failed"))
        assert body["callback_status"] == "delivered" and body["callback_attempts"] == 2


@pytest.mark.parametrize(
    ("script", "attempts"), [([(404, 0)], 1), ([(400, 0)], 1), ([(302, 0)], 1), ([(503, 0)], 4), ([(429, 0)], 4)]
)
def test_client_errors_and_redirects_are_not_retried_server_errors_are(tmp_path, tiny_model, script, attempts):
    callbacks = {**LOOPBACK, "max_attempts": 4, "backoff_base": 0.05}
    with (
        CallbackReceiver(script=script) as receiver,
        in_process(tmp_path, tiny_model, callbacks=callbacks) as service,
        service.client() as client,
    ):
        task_id = submit(client, prompt="a cat", callback_url=receiver.url)
        body = _callback_state(client, task_id, ("delivered", "failed"))
        assert body["callback_status"] == "failed" and body["callback_attempts"] == attempts
        assert body["status"] == "completed"  # a failed delivery never fails the task
        assert len(receiver.received) == attempts


def test_a_receiver_down_all_along_ends_failed_while_the_task_stays_completed(tmp_path, tiny_model):
    with CallbackReceiver() as receiver:
        down_url = receiver.url  # a real port, closed once the receiver stops
    callbacks = {**LOOPBACK, "max_attempts": 3, "backoff_base": 0.05}
    with in_process(tmp_path, tiny_model, callbacks=callbacks) as service, service.client() as client:
        task_id = submit(client, prompt="a cat", callback_url=down_url)
        body = _callback_state(client, task_id, ("failed", "delivered"))
        assert body["callback_status"] == "failed" and body["callback_attempts"] == 3
        assert body["status"] == "completed" and body["result_url"]


def test_a_pending_delivery_is_sent_after_a_restart_with_the_same_id(tmp_path, tiny_model):
    with CallbackReceiver(script=[(500, 0), (200, 0)]) as receiver:
        # A long first wait: the process is killed between the failed try and the retry.
        config = write_config(tmp_path, tiny_model, callbacks={**LOOPBACK, "backoff_base": 4.0})
        with ServiceProcess(config) as first:
            first.wait_ready()
            with first.client() as client:
                task_id = submit(client, prompt="a cat", callback_url=receiver.url)
                receiver.wait_for(1)
                assert _callback_state(client, task_id, ("pending",), attempts=1)["callback_attempts"] == 1
            first.kill()
        with ServiceProcess(config) as second:
            second.wait_ready()
            with second.client() as client:
                body = _callback_state(client, task_id, ("delivered",), timeout=30)
                assert body["callback_attempts"] == 2
        assert len(receiver.received) == 2
        assert len({r.headers["webhook-id"] for r in receiver.received}) == 1


SSRF_VECTORS = [
    "http://127.0.0.1:{port}/cb",
    "http://127.0.0.2:{port}/cb",
    "http://[::1]:{port}/cb",
    "http://0.0.0.0:{port}/cb",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/cb",
    "http://192.168.31.40:9000/cb",
    "http://2130706433:{port}/cb",
    "http://0x7f000001:{port}/cb",
    "http://0177.0.0.1:{port}/cb",
    "http://127.1:{port}/cb",
    "http://[::ffff:127.0.0.1]:{port}/cb",
    "http://loopback.example.test:{port}/cb",
    "ftp://example.com/cb",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/",
    "not a url",
    "http:///no-host",
    "http://user:pw@example.com/cb",
]


async def _stub_resolver(host, port):
    """Names resolve without DNS: two point at loopback, any other at a documentation address (never reached:
    it is refused as non-global, so no test can send traffic off loopback)."""
    return {"loopback.example.test": ["127.0.0.1"], "receiver.example.test": ["127.0.0.1"]}.get(host, ["203.0.113.7"])


def test_ssrf_vectors_are_refused_at_submit_with_no_connection_made(tmp_path, tiny_model):
    from sdapi.config import load_config
    from tests.support.services import InProcessService

    config = load_config(write_config(tmp_path, tiny_model))  # default policy: nothing internal allowed
    with CallbackReceiver() as receiver, InProcessService(config, resolver=_stub_resolver) as service:
        service.wait_ready()
        with service.client() as client:
            for vector in SSRF_VECTORS:
                response = client.post(
                    "/api/v1/generate", json={"prompt": "a cat", "callback_url": vector.format(port=receiver.port)}
                )
                assert response.status_code == 400, (vector, response.text)
                assert "callback_url" in response.json()["detail"], vector
            assert client.get("/health").json()["queue_pending"] == 0
        assert receiver.connections == 0 and receiver.received == []


def test_an_allowed_host_name_is_delivered_to_the_address_it_resolved_to(tmp_path, tiny_model):
    from sdapi.config import load_config
    from tests.support.services import InProcessService

    config = load_config(write_config(tmp_path, tiny_model, callbacks={"allowed_hosts": ["receiver.example.test"]}))
    with CallbackReceiver() as receiver, InProcessService(config, resolver=_stub_resolver) as service:
        service.wait_ready()
        with service.client() as client:
            url = f"http://receiver.example.test:{receiver.port}/api/callback"
            task_id = submit(client, prompt="a cat", callback_url=url)
            (received,) = receiver.wait_for(1)
            assert received.headers["host"] == f"receiver.example.test:{receiver.port}"
            assert _callback_state(client, task_id, ("delivered",))["callback_attempts"] == 1
