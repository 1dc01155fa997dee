"""meshgate demo: two example services behind the gateway.

    make demo                                    # = .venv/bin/python examples/demo.py
    .venv/bin/python examples/demo.py --http-port 8081
    .venv/bin/python examples/demo.py --smoke    # try the routes itself, exit 0/1 (CI)

Starts examples/services/users.py and invoices.py on free ports, then
`meshgate run examples/demo` with USERS_PORT / INVOICES_PORT / MESHGATE_HTTP_PORT
in its environment (the admin port comes from MESHGATE_ADMIN_PORT, default 9876),
waits until the admin API answers /ready, creates a demo user with an API key
through the Admin API (consumers live in a temporary SQLite folder) and prints
curl commands to try: /invoices/* answers 401 without the key, 200 with it,
and 429 past five requests a minute. Ctrl-C (or SIGTERM) stops everything.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "examples" / "services"
LISTENING = re.compile(r"listening on http://\S+:(\d+)")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DemoError(Exception):
    pass


class Child:
    """A subprocess whose output is echoed line by line, prefixed with its name."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port: int | None = None  # from the "listening on" line, for the services
        self.tail: deque[str] = deque(maxlen=50)
        self.listening = threading.Event()  # set on the "listening on" line, or at exit
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, text=True, bufsize=1, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip()
            self.tail.append(line)
            if self.port is None and (match := LISTENING.search(line)):
                self.port = int(match.group(1))
                self.listening.set()
            print(f"{self.name:>8} | {line}", flush=True)
        self.listening.set()

    def output(self) -> str:
        self.reader.join(timeout=2)  # let the last lines of a dead process arrive
        return "\n".join(self.tail) or "(no output)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # the child and anything it started
                os.killpg(self.proc.pid, signal.SIGTERM)

    def reap(self, timeout: float = 5) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"demo: {self.name} ignored SIGTERM for {timeout}s; killing it", flush=True)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def fetch(url: str, timeout: float = 5, headers: dict[str, str] | None = None,
          body: dict[str, object] | None = None) -> tuple[int, str]:
    """GET (or POST a JSON body to) url; (status, body), or (0, reason) without an answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with NO_PROXY.open(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as err:
        return 0, str(err)


def start_service(name: str, children: list[Child]) -> Child:
    child = Child(name, [sys.executable, "-u", str(SERVICES / f"{name}.py"), "--port", "0"])
    children.append(child)
    if not child.listening.wait(10) or child.port is None:
        raise DemoError(f"the {name} service did not start:\n{child.output()}")
    return child


def wait_ready(gateway: Child, admin_port: int, timeout: float = 30) -> None:
    url = f"http://127.0.0.1:{admin_port}/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.proc.poll() is not None:
            raise DemoError(
                f"the gateway exited with code {gateway.proc.returncode}:\n{gateway.output()}"
            )
        if fetch(url, timeout=1)[0] == 200:
            return
        time.sleep(0.2)
    raise DemoError(f"no 200 from {url} after {timeout:.0f}s; gateway output:\n{gateway.output()}")


RATE_LIMIT = 5   # examples/demo/gateway.config.yml: rate-limit max per minute


def create_demo_key(admin_port: int) -> str:
    """A demo user and its key-auth credential, made through the Admin API: 'id:secret'."""
    admin = f"http://127.0.0.1:{admin_port}"
    status, body = fetch(f"{admin}/users", body={
        "username": "demo", "firstname": "Demo", "lastname": "User"})
    if status not in (200, 201, 409):     # 409: kept from an earlier run of the same folder
        raise DemoError(f"creating the demo user failed: {status} {body}")
    status, body = fetch(f"{admin}/credentials", body={
        "consumerId": "demo", "type": "key-auth", "credential": {}})
    if status not in (200, 201):
        raise DemoError(f"creating the demo API key failed: {status} {body}")
    created = json.loads(body)
    return f"{created['keyId']}:{created['keySecret']}"


def routes(host: str, http_port: int, admin_port: int,
           key: str) -> list[tuple[str, int, str, dict[str, str]]]:
    """(url, expected status, what it shows, headers): the banner's curl commands and smoke."""
    gw = f"http://{host}:{http_port}"
    auth = {"Authorization": f"apiKey {key}"}
    return [
        (f"{gw}/users/1", 200, "one user, from the users service", {}),
        (f"{gw}/users", 200, "all users", {}),
        (f"{gw}/users/42", 404, "the users service's own JSON 404, passed through", {}),
        (f"{gw}/nope", 404, "no apiEndpoint matches: the gateway's 404", {}),
        (f"{gw}/invoices/1", 401, "invoices need an API key", {}),
        (f"{gw}/invoices/1", 200, "one invoice, with the demo key", auth),
        (f"http://{host}:{admin_port}/metrics", 200, "Prometheus metrics (admin API)", {}),
    ]


def smoke(http_port: int, admin_port: int, key: str) -> int:
    failed = 0
    for url, expected, _, headers in routes("127.0.0.1", http_port, admin_port, key):
        failed += not check(url, expected, headers)
    # The key already made one call this minute: the limit is reached, then 429.
    url = f"http://127.0.0.1:{http_port}/invoices/2"
    auth = {"Authorization": f"apiKey {key}"}
    for _ in range(RATE_LIMIT - 1):
        failed += not check(url, 200, auth)
    failed += not check(url, 429, auth)
    print(f"demo: smoke test {'FAILED' if failed else 'passed'}", flush=True)
    return 1 if failed else 0


def check(url: str, expected: int, headers: dict[str, str]) -> bool:
    status, body = fetch(url, headers=headers)
    verdict = "ok  " if status == expected else "FAIL"
    first_line = body.strip().splitlines()[0][:70] if body.strip() else ""
    keyed = " (with key)" if headers else ""
    print(f"demo: {verdict} {status} (want {expected}) GET {url}{keyed}  {first_line}",
          flush=True)
    return status == expected


def banner(users: Child, invoices: Child, http_port: int, admin_port: int, key: str) -> str:
    lines = [
        "",
        f"meshgate demo is up: gateway on :{http_port}, admin API on :{admin_port}",
        f"  users service on :{users.port}, invoices service on :{invoices.port}",
        f"  demo user 'demo' with API key {key}",
        "",
        "Try:",
    ]
    for url, expected, note, headers in routes("localhost", http_port, admin_port, key):
        flag = "" if url.endswith("/metrics") else "-i "
        auth = "".join(f"-H '{k}: {v}' " for k, v in headers.items())
        lines.append(f"  curl {flag}{auth}{url}")
        lines.append(f"      # {expected}: {note}")
    loop = (f"for i in $(seq {RATE_LIMIT + 1}); do curl -s -o /dev/null -w '%{{http_code}}\\n' "
            f"-H 'Authorization: apiKey {key}' http://localhost:{http_port}/invoices/1; done")
    lines += [f"  {loop}",
              f"      # 200 until the key has made {RATE_LIMIT} calls this minute, then 429",
              "", "Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace, children: list[Child]) -> int:
    meshgate = Path(sys.executable).parent / "meshgate"  # the venv's console script
    if not meshgate.exists():
        raise DemoError(f"{meshgate} not found; run `make install` first")
    admin_port = int(os.environ.get("MESHGATE_ADMIN_PORT", "9876"))

    users = start_service("users", children)
    invoices = start_service("invoices", children)
    env = {
        **os.environ,
        "USERS_PORT": str(users.port),
        "INVOICES_PORT": str(invoices.port),
        "MESHGATE_HTTP_PORT": str(args.http_port),
        "MESHGATE_ADMIN_PORT": str(admin_port),
        "MESHGATE_DATA_DIR": args.data_dir,
        "PYTHONUNBUFFERED": "1",
    }
    gateway = Child("gateway", [str(meshgate), "run", "examples/demo"], env)
    children.append(gateway)
    wait_ready(gateway, admin_port)
    key = create_demo_key(admin_port)

    if args.smoke:
        return smoke(args.http_port, admin_port, key)
    print(banner(users, invoices, args.http_port, admin_port, key), flush=True)
    while all(child.proc.poll() is None for child in children):
        time.sleep(0.5)
    dead = next(child for child in children if child.proc.poll() is not None)
    raise DemoError(f"{dead.name} exited with code {dead.proc.returncode}:\n{dead.output()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the meshgate demo.")
    parser.add_argument(
        "--http-port", type=int, default=int(os.environ.get("MESHGATE_HTTP_PORT", "8080"))
    )
    parser.add_argument("--smoke", action="store_true", help="try the routes, then exit 0/1")
    args = parser.parse_args(argv)
    args.data_dir = tempfile.mkdtemp(prefix="meshgate-demo-")   # the demo's consumers

    for signum in (signal.SIGINT, signal.SIGTERM):  # both stop the demo like Ctrl-C does
        signal.signal(signum, signal.default_int_handler)
    children: list[Child] = []
    try:
        return run(args, children)
    except KeyboardInterrupt:
        return 0
    except DemoError as err:
        print(f"demo: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in reversed(children):  # the gateway first
            child.stop()
        for child in reversed(children):
            child.reap()
        shutil.rmtree(args.data_dir, ignore_errors=True)
        if children:
            print("demo: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
