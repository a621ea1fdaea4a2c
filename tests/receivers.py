"""Real HTTP servers on loopback for the tests: a scriptable callback receiver and a SigV4 presign gateway."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from sdapi.callbacks.signing import sign


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str


@dataclass
class CallbackReceiver:
    """Answers each POST with the next (status, delay) from `script` (the last one repeats) and records it."""

    script: list[tuple[int, float]] = field(default_factory=lambda: [(200, 0.0)])
    received: list[Received] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                receiver.connections += 1
                super().setup()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                index = len(receiver.received)
                receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body, self.path))
                status, delay = receiver.script[min(index, len(receiver.script) - 1)]
                time.sleep(delay)
                payload = b'{"status": "ok"}'
                try:
                    self.send_response(status)
                    if 300 <= status < 400:
                        self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/api/callback"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CallbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.received)} of {count} callbacks arrived")
            time.sleep(0.02)
        return self.received


# -- presigned URLs --------------------------------------------------------------------------------------------
# moto's S3 server does not check a presigned URL's expiry or signature; S3 and MinIO do. This gateway verifies
# both, independently of the minio SDK (straight from AWS's SigV4 query-string rules), and forwards valid
# requests to moto, so "a presigned URL stops working after its TTL" is observable over HTTP.


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def presign_problem(
    method: str, host: str, path: str, query: str, secret_key: str, now: datetime.datetime
) -> str | None:
    """Why a SigV4 presigned request is invalid at `now` (expired, bad signature), or None if it is valid."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    if "X-Amz-Signature" not in params:
        return "not presigned"
    signed_at = datetime.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    if now > signed_at + datetime.timedelta(seconds=int(params["X-Amz-Expires"])):
        return "Request has expired"
    credential = params["X-Amz-Credential"].split("/")
    date, region, service = credential[1], credential[2], credential[3]
    canonical_query = "&".join(
        f"{quote(key, safe='-_.~')}={quote(value, safe='-_.~')}"
        for key, value in sorted(params.items())
        if key != "X-Amz-Signature"
    )
    canonical_request = "\n".join(
        [method, quote(path, safe="/-_.~"), canonical_query, f"host:{host}\n", "host", "UNSIGNED-PAYLOAD"]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope, _sha256(canonical_request.encode())])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), date), region), service), "aws4_request")
    if not hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), params["X-Amz-Signature"]):
        return "SignatureDoesNotMatch"
    return None


class PresignGateway:
    """Verifies presigned GETs like S3 does, then forwards them to the S3 server behind it."""

    def __init__(self, upstream: str, secret_key: str) -> None:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                problem = presign_problem(
                    "GET",
                    self.headers["Host"],
                    parts.path,
                    parts.query,
                    secret_key,
                    datetime.datetime.now(datetime.UTC),
                )
                if problem is not None:
                    body = f"<Error><Code>AccessDenied</Code><Message>{problem}</Message></Error>".encode()
                    self.send_response(403)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                upstream_response = httpx.get(f"{upstream}{parts.path}")
                self.send_response(upstream_response.status_code)
                for name in ("Content-Type", "ETag"):
                    if name in upstream_response.headers:
                        self.send_header(name, upstream_response.headers[name])
                self.send_header("Content-Length", str(len(upstream_response.content)))
                self.end_headers()
                self.wfile.write(upstream_response.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=gateway.server.serve_forever, daemon=True)

    def __enter__(self) -> PresignGateway:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a Standard Webhooks receiver does: recompute and compare each v1 signature in constant time."""
    expected = sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body).split(",", 1)[1]
    for candidate in headers["webhook-signature"].split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False
