"""Example gRPC service: greeter, with the standard health service.

Run: python examples/services/greeter.py --port 5003 [--name greeter-1]
(needs grpcio: ``make demo`` installs it)

One unary method, ``/demo.Greeter/Hello``, and one server-streaming method,
``/demo.Greeter/Count``. Messages are JSON documents rather than protobuf, so
that the example needs no generated code: gRPC carries any payload in its
frames, and grpcio's generic handlers take a (de)serializer per method. The
content type on the wire is still ``application/grpc``, so meshgate proxies,
retries and counts these calls like any other gRPC call.

    Hello  {"name": "Ada"}          -> {"message": "Hello, Ada", "servedBy": "greeter-1"}
    Count  {"to": 3}                -> {"n": 1}, {"n": 2}, {"n": 3}

A request without a name ends with ``INVALID_ARGUMENT``; ``grpc.health.v1``
answers SERVING.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def _load(data: bytes) -> Any:
    return json.loads(data or b"{}")


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()


def serve() -> None:
    parser = argparse.ArgumentParser(description="the greeter example gRPC service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--name", default="greeter", help="replica name (default: %(default)s)")
    args = parser.parse_args()

    def hello(request: Any, context: grpc.ServicerContext) -> Any:
        name = request.get("name") if isinstance(request, dict) else None
        if not isinstance(name, str) or not name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, 'expected {"name": "..."}')
        return {"message": f"Hello, {name}", "servedBy": args.name}

    def count(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        to = request.get("to", 3) if isinstance(request, dict) else 3
        for n in range(1, min(int(to), 100) + 1):
            yield {"n": n, "servedBy": args.name}

    handlers = grpc.method_handlers_generic_handler("demo.Greeter", {
        "Hello": grpc.unary_unary_rpc_method_handler(
            hello, request_deserializer=_load, response_serializer=_dump),
        "Count": grpc.unary_stream_rpc_method_handler(
            count, request_deserializer=_load, response_serializer=_dump),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handlers,))
    checks = health.HealthServicer()
    checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    print(f"listening on http://{args.host}:{port} (gRPC, h2c)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()


def call(target: str, method: str, request: Any, *, authority: str | None = None,
         metadata: list[tuple[str, str]] | None = None, timeout: float = 5) -> Any:
    """One call to ``target`` (host:port); a list for ``Count``. Raises grpc.RpcError."""
    options = [("grpc.default_authority", authority)] if authority else []
    with grpc.insecure_channel(target, options=options) as channel:
        if method == "Count":
            stream = channel.unary_stream("/demo.Greeter/Count", request_serializer=_dump,
                                          response_deserializer=_load)
            return list(stream(request, metadata=metadata, timeout=timeout))
        unary = channel.unary_unary(f"/demo.Greeter/{method}", request_serializer=_dump,
                                    response_deserializer=_load)
        return unary(request, metadata=metadata, timeout=timeout)


if __name__ == "__main__":
    serve()
