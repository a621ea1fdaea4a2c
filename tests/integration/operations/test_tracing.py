"""Traces across nodes: one task is one trace, from the HTTP request that submits it through its queue wait, claim,
denoising, each image's encode and upload, the settle of its outcome and its callback, in process (the SDK's
in-memory exporter) and across an API node and a worker on PostgreSQL, exported over OTLP/HTTP to a real receiver
on loopback. Off, nothing is recorded, and log lines carry the trace's id when on."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sdapi.observability import tracing
from sdapi.observability.logs import ContextFilter, task_context
from tests.receivers import CallbackReceiver
from tests.support.services import ServiceProcess, WorkerProcess, submit, wait_for_task, write_config
from tests.support.waiting import eventually

WORKER_SPANS = {"sdapi.queue_wait", "sdapi.claim", "sdapi.denoise", "sdapi.encode", "sdapi.upload", "sdapi.settle"}


@pytest.fixture()
def exported():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)


def test_one_task_is_one_trace_in_process(exported, make_service):
    with CallbackReceiver() as receiver:
        service = make_service(
            "traced", callbacks={"allowed_hosts": ["127.0.0.1/32"], "backoff_base": 0.1}, model={"dtype": "float32"}
        )
        with service.client() as client:
            task_id = submit(client, prompt="a harbour", num_inference_steps=2, num_images=2, callback_url=receiver.url)
            assert wait_for_task(client, task_id)["status"] == "completed"

        def callback_traced():
            return any(span.name == "sdapi.callback" for span in exported.get_finished_spans())

        eventually(callback_traced, timeout=60, what="the callback attempt's span")
    spans = exported.get_finished_spans()
    [request] = [span for span in spans if span.name == "POST /api/v1/generate"]
    trace_id = request.context.trace_id
    in_trace = [span for span in spans if span.context.trace_id == trace_id]
    names = [span.name for span in in_trace]
    assert WORKER_SPANS | {"sdapi.callback"} <= set(names), names
    assert names.count("sdapi.encode") == names.count("sdapi.upload") == 2  # one per image
    for span in in_trace:
        if span.name.startswith("sdapi."):
            assert span.parent is not None and span.parent.span_id == request.context.span_id, span.name
    by_name = {span.name: span for span in in_trace}
    assert by_name["sdapi.queue_wait"].end_time <= by_name["sdapi.denoise"].start_time
    assert by_name["sdapi.denoise"].end_time <= by_name["sdapi.settle"].start_time
    assert by_name["sdapi.callback"].attributes["outcome"] == "delivered"


def test_off_unless_the_otel_environment_names_an_exporter():
    assert not tracing.enabled({})
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing.enabled({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.enabled({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
    assert not tracing.enabled({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
    assert not tracing.configure("api", {})
    # Off, a task carries no trace and recording is a no-op.
    assert tracing.current_traceparent() is None
    tracing.record("sdapi.denoise", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", 0.0, 1.0)


def test_log_lines_carry_the_trace_id():
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    record = logging.LogRecord("sdapi", logging.INFO, __file__, 1, "x", None, None)
    with task_context("task-1", "request-1", traceparent):
        ContextFilter().filter(record)
    assert (record.task_id, record.trace_id) == ("task-1", "0af7651916cd43dd8448eb211c80319c")


class _Collector(ThreadingHTTPServer):
    """An OTLP/HTTP receiver on loopback: every exported span, by service role."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _CollectorHandler)


class _CollectorHandler(BaseHTTPRequestHandler):
    server: _Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.server.lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.server.spans.append((attributes.get("sdapi.role", ""), span))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *arguments: object) -> None:
        pass


@pytest.mark.postgres
@pytest.mark.slow
def test_a_trace_spans_an_api_node_and_a_worker(tmp_path, tiny_model, postgres):
    collector = _Collector()
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        config = write_config(
            tmp_path,
            tiny_model,
            store={"backend": "postgres", "postgres": {"dsn": postgres.new_database(), "pool_size": 4}},
            model={"dtype": "float32"},
        )
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
        with ServiceProcess(config, env=env, role="api") as api, WorkerProcess(config, env=env):
            api.wait_ready()
            with api.client() as client:
                task_id = submit(client, prompt="a lighthouse", num_inference_steps=2)
                assert wait_for_task(client, task_id, timeout=180)["status"] == "completed"

            def one_trace_from_both():
                with collector.lock:
                    spans = list(collector.spans)
                requests = [span for role, span in spans if role == "api" and span.name == "POST /api/v1/generate"]
                if not requests:
                    return None
                trace_id = requests[-1].trace_id
                worker = {span.name for role, span in spans if role == "worker" and span.trace_id == trace_id}
                return (requests[-1], worker) if worker >= WORKER_SPANS else None

            found: list = []
            eventually(lambda: bool(found.append(one_trace_from_both()) or found[-1]), timeout=60, what="the trace")
            request, worker = found[-1]
            assert worker >= WORKER_SPANS
            with collector.lock:
                children = [s for role, s in collector.spans if role == "worker" and s.trace_id == request.trace_id]
            assert all(span.parent_span_id == request.span_id for span in children)
    finally:
        collector.shutdown()
