"""meshgate demo: a small service mesh behind the gateway.

    make demo                                    # = .venv/bin/python examples/demo.py
    .venv/bin/python examples/demo.py --http-port 8081
    .venv/bin/python examples/demo.py --smoke    # play the scenario itself, exit 0/1 (CI)

Theory of operation
-------------------
Everything runs on loopback, each child in its own process group:

1. ``meshgate registry`` on a free port (its data in a temporary folder);
2. the replicas ``users-1``, ``users-2``, ``invoices-1`` and the gRPC service
   ``greeter-1`` (examples/services),
   each beside its own ``meshgate sidecar``, which registers the replica's
   inbound port in the registry. Every app gets ``HTTP_PROXY`` = its sidecar's
   outbound port, so invoices reaches ``http://users`` through the mesh;
3. ``meshgate run examples/demo`` (http port --http-port, else MESHGATE_HTTP_PORT,
   else 8080; admin port MESHGATE_ADMIN_PORT, else 9876; --smoke takes free
   ports for both unless they are given) whose serviceEndpoints find both services
   in the registry (REGISTRY_URL), with retries, outlier detection and health
   checks. Consumers live in a temporary SQLite folder. /invoices/* allows a
   consumer INVOICES_RATE_LIMIT (10) requests a minute; --smoke sets 25.

Once the gateway answers /ready and sees every replica healthy, the demo
creates a user with an API key through the Admin API and prints what runs
where, curl commands, and the ``kill`` command that stops a users replica.
``--smoke`` instead checks the routes and gRPC calls to greeter (through the
gateway and from invoices-1's sidecar), kills users-1's app with SIGKILL while
requests keep succeeding (retries hide the sidecar's 502s), waits for the
sidecar to deregister it on its own (its app check fails twice, about 2 s),
stops the sidecar with SIGTERM, and checks the rate limit. Ctrl-C (or SIGTERM)
stops every child: the gateway, sidecars and apps first, the registry last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from demo_mesh import SERVICES, Child, DemoError, Mesh, fetch, free_port, say, start_mesh, stop_all

sys.path.insert(0, str(SERVICES))
import greeter

RATE_LIMIT = 10        # examples/demo/gateway.config.yml: default max per consumer and minute
SMOKE_RATE_LIMIT = 25  # --smoke raises it, so the failover requests fit in one window


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


def routes(mesh: Mesh, host: str, key: str) -> list[tuple[str, int, str, dict[str, str]]]:
    """(url, expected status, what it shows, headers): the banner's curl commands and smoke."""
    gw, admin = f"http://{host}:{mesh.http_port}", f"http://{host}:{mesh.admin_port}"
    auth = {"Authorization": f"apiKey {key}"}
    return [
        (f"{gw}/users/1", 200, "one user; servedBy names the replica (run it twice)", {}),
        (f"{gw}/users", 200, "all users", {}),
        (f"{gw}/users/42", 404, "the users service's own JSON 404, passed through", {}),
        (f"{gw}/nope", 404, "no apiEndpoint matches: the gateway's 404", {}),
        (f"{gw}/invoices/1", 401, "invoices need an API key", {}),
        (f"{gw}/invoices/1", 200, "one invoice, with the demo key", auth),
        (f"{gw}/invoices/by-user/1", 200,
         "user 1's invoices, and the user record invoices got from users via its sidecar", auth),
        (f"http://{host}:{mesh.registry_port}/v1/services/users", 200,
         "the registry: both users replicas (their sidecars' inbound ports)", {}),
        (f"{admin}/clusters", 200, "the gateway's endpoints and their health (admin API)", {}),
        (f"{admin}/metrics", 200, "Prometheus metrics (admin API)", {}),
    ]


class Smoke:
    """The scenario as checks; counts the keyed /invoices calls against the rate limit."""

    def __init__(self, mesh: Mesh, key: str, limit: int) -> None:
        self.mesh = mesh
        self.gw = f"http://127.0.0.1:{mesh.http_port}"
        self.auth = {"Authorization": f"apiKey {key}"}
        self.key = key
        self.limit = limit
        self.keyed = 0      # keyed /invoices requests so far (the rate limit counts them)
        self.failed = 0

    def check(self, url: str, expected: int, headers: dict[str, str] | None = None,
              quiet: bool = False) -> object:
        """GET url; counts a failure unless the status is expected. The decoded JSON, or None."""
        headers = headers or {}
        keyed = "Authorization" in headers
        self.keyed += keyed and "/invoices" in url
        status, body = fetch(url, headers=headers)
        ok = status == expected
        self.failed += not ok
        if not (ok and quiet):
            first_line = body.strip().splitlines()[0][:80] if body.strip() else ""
            say(f"demo: {'ok  ' if ok else 'FAIL'} {status} (want {expected}) GET {url}"
                f"{' (with key)' if keyed else ''}  {first_line}")
        try:
            return json.loads(body) if ok else None
        except ValueError:
            return None

    def expect(self, condition: bool, what: str) -> None:
        self.failed += not condition
        say(f"demo: {'ok  ' if condition else 'FAIL'} {what}")

    def run(self) -> int:
        for url, expected, _, headers in routes(self.mesh, "127.0.0.1", self.key):
            self.check(url, expected, headers)
        self.joined_through_the_mesh()
        self.grpc_calls()
        served = {self.served_by(f"{self.gw}/users/1") for _ in range(4)}
        self.expect(served == {"users-1", "users-2"}, f"both users replicas answer: {served}")
        self.failover()
        self.rate_limit()
        say(f"demo: smoke test {'FAILED' if self.failed else 'passed'}")
        return 1 if self.failed else 0

    def joined_through_the_mesh(self) -> None:
        data = self.check(f"{self.gw}/invoices/by-user/2", 200, self.auth)
        user = data.get("user") if isinstance(data, dict) else None
        invoices = data.get("invoices") if isinstance(data, dict) else None
        self.expect(isinstance(user, dict) and user.get("name") == "Grace Hopper"
                    and user.get("servedBy") in ("users-1", "users-2")
                    and isinstance(invoices, list) and len(invoices) == 1,
                    "invoices joined user 2 with the record a users replica sent")

    def grpc_calls(self) -> None:
        """greeter-1 over gRPC: through the gateway, and from invoices-1's sidecar."""
        gateway = f"127.0.0.1:{self.mesh.http_port}"
        outbound = f"127.0.0.1:{self.mesh.replicas['invoices-1'].outbound}"
        for where, target, authority in (("the gateway", gateway, None),
                                         ("invoices-1's sidecar", outbound, "greeter")):
            try:
                reply = greeter.call(target, "Hello", {"name": "Ada"}, authority=authority)
                counted = greeter.call(target, "Count", {"to": 3}, authority=authority)
            except greeter.grpc.RpcError as err:
                self.expect(False, f"gRPC through {where}: {err.code().name} {err.details()}")
                continue
            self.expect(reply == {"message": "Hello, Ada", "servedBy": "greeter-1"}
                        and [m["n"] for m in counted] == [1, 2, 3],
                        f"gRPC through {where}: Hello -> {reply}, Count streamed "
                        f"{len(counted)} messages")
        try:
            greeter.call(gateway, "Hello", {})
            self.expect(False, "a gRPC call without a name fails")
        except greeter.grpc.RpcError as err:
            self.expect(err.code() == greeter.grpc.StatusCode.INVALID_ARGUMENT,
                        f"the app's gRPC status comes back through the gateway: "
                        f"{err.code().name} {err.details()!r}")

    def served_by(self, url: str, keyed: bool = False, host: str | None = None) -> str | None:
        """GET url, expecting 200: the servedBy of the user record in the answer."""
        headers = {**(self.auth if keyed else {}), **({"Host": host} if host else {})}
        data = self.check(url, 200, headers, quiet=True)
        if isinstance(data, dict) and isinstance(data.get("user"), dict):
            data = data["user"]
        return data.get("servedBy") if isinstance(data, dict) else None

    def failover(self) -> None:
        victim = self.mesh.replicas["users-1"]
        say(f"demo: SIGKILL users-1's app (pid {victim.app.proc.pid}); its sidecar answers "
            "502 until its app check fails twice, then deregisters it")
        killed = time.monotonic()
        victim.app.kill(signal.SIGKILL)
        self.outbound_hides_users_1()
        self.all_served_by_users_2("after users-1's app died", 20)
        ids = self.users_registered(deadline=killed + 5)
        self.expect(ids == ["users-2"], f"users-1's sidecar deregistered it "
                    f"{time.monotonic() - killed:.1f}s after the kill: the registry lists {ids}")
        say(f"demo: SIGTERM users-1's sidecar (pid {victim.sidecar.proc.pid})")
        victim.sidecar.kill(signal.SIGTERM)
        self.all_served_by_users_2("after users-1's sidecar stopped", 10)

    def users_registered(self, deadline: float) -> object:
        """The users instances the registry lists, once only users-2 is left (or at deadline)."""
        while True:
            status, body = fetch(f"http://127.0.0.1:{self.mesh.registry_port}/v1/services/users")
            ids = [i.get("id") for i in json.loads(body)["instances"]] if status == 200 else body
            if ids == ["users-2"] or time.monotonic() > deadline:
                return ids
            time.sleep(0.05)

    def outbound_hides_users_1(self) -> None:
        """The invoices replica's own view: its sidecar's outbound port retries elsewhere."""
        proxy = f"http://127.0.0.1:{self.mesh.replicas['invoices-1'].outbound}"
        served = [self.served_by(f"{proxy}/users/1", host="users") for _ in range(10)]
        bad = [s for s in served if s != "users-2"]
        self.expect(not bad, f"invoices-1's sidecar, Host: users: {len(served) - len(bad)}/"
                             f"{len(served)} requests succeeded, served by users-2")

    def all_served_by_users_2(self, when: str, count: int) -> None:
        """count requests, half to /users, half to /invoices/by-user: users-2 answers all."""
        served = []
        for n in range(count // 2):
            served.append(self.served_by(f"{self.gw}/users/{n % 3 + 1}"))
            served.append(self.served_by(f"{self.gw}/invoices/by-user/{n % 2 + 1}", True))
        bad = [s for s in served if s != "users-2"]
        self.expect(not bad, f"{when}: {len(served) - len(bad)}/{len(served)} requests "
                             "succeeded, served by users-2")

    def rate_limit(self) -> None:
        url = f"{self.gw}/invoices/1"
        while self.keyed < self.limit:
            self.check(url, 200, self.auth, quiet=True)
        self.check(url, 429, self.auth)


def banner(mesh: Mesh, key: str, limit: int) -> str:
    users1 = mesh.replicas["users-1"]
    lines = ["", "meshgate demo is up: a registry, four replicas with sidecars, one gateway",
             "", f"  {'process':<18} {'pid':>7}  listens on"]
    for child, where in mesh.layout():
        lines.append(f"  {child.name:<18} {child.proc.pid:>7}  {where}")
    lines += ["", f"  demo user 'demo' with API key {key}", "", "Try:"]
    for url, expected, note, headers in routes(mesh, "localhost", key):
        flag = "-s " if url.endswith(("/metrics", "/clusters")) else "-i "
        auth = "".join(f"-H '{k}: {v}' " for k, v in headers.items())
        lines += [f"  curl {flag}{auth}{url}", f"      # {expected}: {note}"]
    by_user = (f"curl -s -H 'Authorization: apiKey {key}' "
               f"http://localhost:{mesh.http_port}/invoices/by-user/1")
    limit_loop = (f"for i in $(seq {limit + 1}); do curl -s -o /dev/null -w '%{{http_code}} ' "
                  f"-H 'Authorization: apiKey {key}' http://localhost:{mesh.http_port}"
                  "/invoices/1; done; echo")
    lines += [
        "", "Stop a users replica; requests keep succeeding:",
        f"  kill {users1.app.proc.pid}",
        "      # users-1's app dies; its sidecar answers 502 until its app check (every 1 s)",
        "      # fails twice, then deregisters users-1: gone from the registry within ~2 s",
        f"  for i in 1 2 3 4; do curl -s http://localhost:{mesh.http_port}/users/1; echo; done",
        f"  for i in 1 2 3; do {by_user}; echo; done",
        "      # all 200 from users-2: until then retries (and outlier detection) hide the 502s",
        f"  kill {users1.sidecar.proc.pid}",
        "      # users-1's sidecar drains and exits (a sidecar killed with -9 cannot",
        "      # deregister: its instance turns critical after its 3 s TTL)",
        "", "gRPC (greeter-1 behind its sidecar; JSON messages: examples/services/greeter.py):",
        f"  cd examples/services && ../../.venv/bin/python -c \"import greeter; "
        f"print(greeter.call('localhost:{mesh.http_port}', 'Hello', {{'name': 'Ada'}}))\"",
        "      # through the gateway: {'message': 'Hello, Ada', 'servedBy': 'greeter-1'}",
        "", "Rate limit:", f"  {limit_loop}",
        f"      # 200 until the key has made {limit} /invoices calls this minute, then 429",
        "", "Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def port_option(given: int | None, env: str, default: int, smoke: bool) -> int:
    """The port given, else $env, else a free port for --smoke, else the default."""
    if given is not None:
        return given
    if os.environ.get(env):
        return int(os.environ[env])
    return free_port() if smoke else default


def run(args: argparse.Namespace, children: list[Child]) -> int:
    limit = (SMOKE_RATE_LIMIT if args.smoke
             else int(os.environ.get("INVOICES_RATE_LIMIT") or RATE_LIMIT))
    admin_port = port_option(None, "MESHGATE_ADMIN_PORT", 9876, args.smoke)
    http_port = port_option(args.http_port, "MESHGATE_HTTP_PORT", 8080, args.smoke)
    mesh = start_mesh(children, Path(args.data_dir), http_port, admin_port,
                      {"INVOICES_RATE_LIMIT": str(limit)})
    key = create_demo_key(admin_port)
    if args.smoke:
        return Smoke(mesh, key, limit).run()
    say(banner(mesh, key, limit))
    mesh.watch()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the meshgate demo.")
    parser.add_argument("--http-port", type=int, default=None,
                        help="the gateway's port (default: $MESHGATE_HTTP_PORT, else 8080; "
                             "a free port with --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="play the scenario with checks, then exit 0/1")
    args = parser.parse_args(argv)
    args.data_dir = tempfile.mkdtemp(prefix="meshgate-demo-")  # consumers, registry snapshot

    for signum in (signal.SIGINT, signal.SIGTERM):  # both stop the demo like Ctrl-C does
        signal.signal(signum, signal.default_int_handler)
    children: list[Child] = []
    started = time.monotonic()
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
        stop_all(children)
        shutil.rmtree(args.data_dir, ignore_errors=True)
        if children:
            say(f"demo: stopped after {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
