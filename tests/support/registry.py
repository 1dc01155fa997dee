"""A real ``meshgate registry`` process for tests, and an SSE reader for its watches.

The registry is started with an operator token file the test writes first
(``token``, the same across restarts); ``headers`` authorize as the
operator, ``join_token(service)`` makes a service's join token.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx

from meshgate.registry.tokens import new_token
from tests.support.gateway import MESHGATE, free_port, stop_process, wait_until


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class RegistryProcess:
    """``meshgate registry`` on a free loopback port, healthy before use."""

    def __init__(self, directory: Path, *args: str, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.token_file = directory / f"registry-{self.port}-operator.token"
        if not self.token_file.exists():
            self.token_file.write_text(new_token(None)[1] + "\n")
        self.token = self.token_file.read_text().strip()
        self.headers = bearer(self.token)
        self.args = ["--operator-token-file", str(self.token_file), *args]
        self.log_path = directory / f"registry-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*MESHGATE, "registry", "--port", str(self.port), *self.args],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(self.healthy, timeout=15)
        except TimeoutError:
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"registry did not start:\n{self.log()}") from None

    def healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"registry exited {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url + "/v1/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        return stop_process(self.process, sig, timeout)

    # -- sync helpers for tests -------------------------------------------------
    def put(self, service: str, instance_id: str, **body: Any) -> httpx.Response:
        body.setdefault("address", "10.0.0.1")
        body.setdefault("port", 8080)
        return httpx.put(f"{self.url}/v1/services/{service}/instances/{instance_id}",
                         json=body, timeout=5, headers=self.headers)

    def heartbeat(self, service: str, instance_id: str) -> httpx.Response:
        return httpx.put(f"{self.url}/v1/services/{service}/instances/{instance_id}/heartbeat",
                         timeout=5, headers=self.headers)

    def delete(self, service: str, instance_id: str) -> httpx.Response:
        return httpx.delete(f"{self.url}/v1/services/{service}/instances/{instance_id}",
                            timeout=5, headers=self.headers)

    def join_token(self, service: str) -> str:
        made = httpx.post(f"{self.url}/v1/tokens", json={"service": service}, timeout=5,
                          headers=self.headers)
        assert made.status_code == 201, made.text
        return str(made.json()["token"])

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url + path, params=params, timeout=30, headers=self.headers)

    def instances(self, service: str) -> list[dict[str, Any]]:
        return list(self.get(f"/v1/services/{service}").json()["instances"])


class Events:
    """The ``snapshot`` events of one SSE response, read as needed."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self) -> dict[str, Any]:
        kind = None
        async for line in self.lines:
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                assert kind == "snapshot"
                return dict(json.loads(line[6:]))
        raise AssertionError("stream ended")
