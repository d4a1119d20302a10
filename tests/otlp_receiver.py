"""In-process OTLP receivers for tests: the collector's own services, on 127.0.0.1.

``OtlpReceiver`` serves the OpenTelemetry Collector's gRPC ``TraceService`` and
``MetricsService`` (from opentelemetry-proto) with grpcio and keeps every
``ExportTraceServiceRequest`` / ``ExportMetricsServiceRequest`` it accepts. It can be
stopped and started again on the same port (a collector restart), told to answer
``UNAVAILABLE`` (a collector refusing), or to answer after a delay (a slow collector).

``OtlpHttpReceiver`` accepts OTLP/HTTP protobuf POSTs on ``/v1/traces`` and ``/v1/metrics``.

Both are context managers; ``stop()`` releases the port.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


def any_value(v: AnyValue) -> Any:
    """A protobuf ``AnyValue`` as a Python value (arrays as lists)."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind is None:
        return None
    return getattr(v, kind)


def attributes(kvs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass
class ReceivedSpan:
    span: trace_pb2.Span
    resource: dict[str, Any]
    scope: str

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes(self.span.attributes)


class _Store:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []

    def add_traces(self, req: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.cond:
            self.trace_requests.append(req)
            self.cond.notify_all()

    def add_metrics(self, req: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self.cond:
            self.metric_requests.append(req)
            self.cond.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        with self.cond:
            reqs = list(self.trace_requests)
        out: list[ReceivedSpan] = []
        for req in reqs:
            for rs in req.resource_spans:
                res = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out.extend(ReceivedSpan(s, res, ss.scope.name) for s in ss.spans)
        return out

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.1))
        return True

    def wait_spans(self, n: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        self.wait(
            lambda: (
                sum(
                    len(ss.spans)
                    for r in self.trace_requests
                    for rs in r.resource_spans
                    for ss in rs.scope_spans
                )
                >= n
            ),
            timeout,
        )
        return self.spans()

    def latest_metrics(self) -> dict[str, metrics_pb2.Metric]:
        """Metric name -> the metric in the newest metrics request (cumulative: newest wins)."""
        with self.cond:
            if not self.metric_requests:
                return {}
            req = self.metric_requests[-1]
        return {m.name: m for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}

    def wait_metrics(self, n_requests: int = 1, timeout: float = 10.0) -> dict[str, metrics_pb2.Metric]:
        self.wait(lambda: len(self.metric_requests) >= n_requests, timeout)
        return self.latest_metrics()


class OtlpReceiver(_Store):
    """gRPC OTLP receiver. ``mode``: ``"ok"``, ``"unavailable"``; ``delay_s`` before answering."""

    def __init__(self, port: int = 0) -> None:
        super().__init__()
        self.port = port
        self.mode = "ok"
        self.delay_s = 0.0
        self.refused = 0
        self._server: grpc.Server | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _answer(self, context: grpc.ServicerContext) -> bool:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.mode == "unavailable":
            self.refused += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "test receiver refusing")
        return True

    def start(self) -> None:
        recv = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                recv._answer(context)
                recv.add_traces(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                recv._answer(context)
                recv.add_metrics(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
        bound = server.add_insecure_port(f"127.0.0.1:{self.port}")
        if bound == 0:
            raise RuntimeError(f"cannot bind 127.0.0.1:{self.port}")
        self.port = bound
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0).wait(5)
            self._server = None

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OtlpHttpReceiver(_Store):
    """OTLP/HTTP (protobuf) receiver on 127.0.0.1: POST /v1/traces, /v1/metrics."""

    def __init__(self) -> None:
        super().__init__()
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                store.content_types.append(self.headers.get("Content-Type", ""))
                if self.path == "/v1/traces":
                    req = trace_service_pb2.ExportTraceServiceRequest()
                    req.ParseFromString(body)
                    store.add_traces(req)
                    reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    mreq = metrics_service_pb2.ExportMetricsServiceRequest()
                    mreq.ParseFromString(body)
                    store.add_metrics(mreq)
                    reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.content_types: list[str] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> OtlpHttpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
