"""A gRPC service for tests: ``tests/data/grpc/echo.proto``, served by grpcio.

``stubs()`` compiles the proto with grpcio-tools once per proto version into
a cache folder under the system temp dir and returns ``(pb2, pb2_grpc)``;
nothing generated is kept in the tree.

``GrpcApp(name=...)`` serves Echo and the standard ``grpc.health.v1.Health``
on 127.0.0.1 (an ephemeral port, plaintext HTTP/2, or TLS with
``tls=(key_pem, cert_pem)``) in threads of the test process, and records
what it saw: each call's method and metadata, the time its deadline left
(``remaining``, None without one), and the server streams whose client
went away before the end (``cancelled``). Request metadata steers an answer:

* ``x-echo-code: N`` (with ``x-echo-message``): the call ends with status N;
  ``x-echo-fail-times: K`` limits that to the first K calls carrying the
  same ``x-echo-key`` (retry tests); ``x-echo-trailers-only: 1`` makes the
  failure a trailers-only response (no message sent first);
* ``x-echo-delay-ms: D``: the answer waits D ms;
* every ``x-echo-meta-*`` field (``-bin`` ones too) comes back in the
  initial metadata and, again, in the trailing metadata.

Every answer's trailing metadata holds ``server-name: NAME`` and
``trace-bin: 00 01 ff fe`` (binary metadata).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

PROTO = Path(__file__).resolve().parents[1] / "data" / "grpc" / "echo.proto"
BINARY = b"\x00\x01\xff\xfe"
# Messages up to 16 MiB (grpcio refuses more than 4 MiB by default).
LARGE_MESSAGES = [("grpc.max_receive_message_length", 16 << 20),
                  ("grpc.max_send_message_length", 16 << 20)]
_lock = threading.Lock()
_stubs: tuple[Any, Any] | None = None


def stubs() -> tuple[Any, Any]:
    """The generated ``echo_pb2`` and ``echo_pb2_grpc`` modules."""
    global _stubs
    with _lock:
        if _stubs is None:
            digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()[:12]
            out = Path(tempfile.gettempdir()) / f"meshgate-grpc-{digest}"
            if not (out / "echo_pb2_grpc.py").exists():
                from grpc_tools import protoc
                tmp = out.with_name(out.name + f".{threading.get_ident()}")
                tmp.mkdir(parents=True, exist_ok=True)
                code = protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={tmp}",
                                    f"--grpc_python_out={tmp}", str(PROTO)])
                if code != 0:
                    raise RuntimeError(f"protoc failed on {PROTO} ({code})")
                with contextlib.suppress(OSError):      # another process got there first
                    tmp.rename(out)
            if str(out) not in sys.path:
                sys.path.insert(0, str(out))
            _stubs = (importlib.import_module("echo_pb2"),
                      importlib.import_module("echo_pb2_grpc"))
        return _stubs


class GrpcApp:
    def __init__(self, name: str = "app", workers: int = 16,
                 tls: tuple[bytes, bytes] | None = None) -> None:
        pb2, pb2_grpc = stubs()
        self.name = name
        self.calls: list[tuple[str, dict[str, str | bytes]]] = []   # (method, metadata)
        self.remaining: list[float | None] = []                      # per call, as calls
        self.cancelled: list[str] = []                               # methods whose client left
        self.failed: dict[str, int] = {}                              # x-echo-key -> failures
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                  options=LARGE_MESSAGES)
        pb2_grpc.add_EchoServicer_to_server(_Echo(self, pb2), self.server)
        self.health = health.HealthServicer()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port(
                "127.0.0.1:0", grpc.ssl_server_credentials([tls]))
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"{'http' if tls is None else 'https'}://127.0.0.1:{self.port}"
        self.server.start()

    def set_serving(self, serving: bool, service: str = "") -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving \
            else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(service, status)

    def stop(self) -> None:
        self.server.stop(grace=None)

    def __enter__(self) -> GrpcApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Echo:
    """The servicer (grpcio looks its methods up by name)."""

    def __init__(self, app: GrpcApp, pb2: Any) -> None:
        self.app = app
        self.pb2 = pb2

    # -- what every call does first and last ------------------------------
    def _begin(self, method: str, context: grpc.ServicerContext) -> dict[str, str | bytes]:
        meta = {k: v for k, v in context.invocation_metadata()}
        with self.app._lock:
            self.app.calls.append((method, meta))
            left = context.time_remaining()
            self.app.remaining.append(left if left is not None and left < 1e9 else None)
        echoed = [(k, v) for k, v in meta.items() if k.startswith("x-echo-meta-")]
        if echoed and meta.get("x-echo-trailers-only") != "1":
            context.send_initial_metadata(echoed)
        delay = int(str(meta.get("x-echo-delay-ms", "0")))
        if delay:
            time.sleep(delay / 1000)
        context.set_trailing_metadata(
            [("server-name", self.app.name), ("trace-bin", BINARY), *echoed])
        code = int(str(meta.get("x-echo-code", "0")))
        if code:
            key = str(meta.get("x-echo-key", ""))
            limit = int(str(meta.get("x-echo-fail-times", "-1")))
            with self.app._lock:
                seen = self.app.failed.get(key, 0)
                fail = limit < 0 or seen < limit
                if fail:
                    self.app.failed[key] = seen + 1
            if fail:
                context.abort(grpc.StatusCode(_by_value(code)),
                              str(meta.get("x-echo-message", f"failed with {code}")))
        return meta

    def Unary(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._begin("Unary", context)
        return self.pb2.Msg(text=request.text, seq=request.seq, blob=request.blob)

    def ServerStream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._begin("ServerStream", context)
        sent = 0
        try:
            for i in range(request.times):
                if i and request.gap_ms:
                    time.sleep(request.gap_ms / 1000)
                if not context.is_active():
                    break
                yield self.pb2.Msg(text=request.text, seq=i)
                sent += 1
        finally:        # left early: grpcio stopped asking, the client cancelled
            if sent < request.times:
                with self.app._lock:
                    self.app.cancelled.append("ServerStream")

    def ClientStream(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        self._begin("ClientStream", context)
        texts = [m.text for m in requests]
        return self.pb2.Msg(text="".join(texts), seq=len(texts))

    def Bidi(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        self._begin("Bidi", context)
        for m in requests:
            yield self.pb2.Msg(text=m.text, seq=m.seq, blob=m.blob)

    def SetHealth(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.app.set_serving(request.serving, request.service)
        return self.pb2.Empty()


def _by_value(code: int) -> tuple[int, str]:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.value
    raise ValueError(f"no gRPC status {code}")


def channel(target: str) -> grpc.Channel:
    """A plaintext channel to ``host:port`` (meshgate or the app)."""
    return grpc.insecure_channel(target)
