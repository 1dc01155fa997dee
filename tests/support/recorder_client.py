"""The differential check: what a client sent, what meshgate answered, what the backend parsed.

Theory of operation
-------------------
``Rig`` is a real meshgate in front of the recording origin
(``tests/support/recorder.py``): ``/admin/*`` is proxied behind key-auth,
``/public/*`` and every other path without authentication. No test holds a
key, so a request the origin resolves to ``/admin/...`` is a walk around the
gateway.

``Rig.check(data)`` sends ``data`` on one connection, followed by a probe
request (``GET /public/_probe``): the probe's answer proves every earlier
response arrived, so no test waits for silence. It then reads the answers,
asks the origin what it parsed since a mark, and returns the violations of
the invariant, as sentences (an empty list: the exchange was sound):

* the client gets proper HTTP/1.1 responses; a refusal (400, 408, 413, 414,
  431, 501, 505) is the last response and the connection is closed;
* every request the origin parsed was answered to the client (nothing
  smuggled), completely, with nothing left unparsed on the connection;
* no request reached ``/admin`` (after dot segments and escapes are resolved);
* the i-th answer from the origin belongs to the i-th request a strict
  parser (h11, over the client's bytes) finds there: same method, same
  normalised path, same body bytes.

The gateway is shared by a module's tests; one that saw a violation is
replaced before the next test, so one broken connection does not fail the rest.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.gateway import Gateway, wait_until
from tests.support.recorder_reference import normalise, reaches_admin, reference

ROOT = Path(__file__).resolve().parents[2]
PROBE = b"GET /public/_probe HTTP/1.1\r\nHost: gw\r\n\r\n"
REFUSALS = frozenset({400, 408, 413, 414, 431, 501, 505})
_UNRESERVED = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
_ANSWER = re.compile(rb"^request (\d+) ")


class RecorderProcess:
    """``python -m tests.support.recorder``: the origin, and its side channel."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "tests.support.recorder"],
                                        stdout=subprocess.PIPE, cwd=ROOT, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening on"):
            raise RuntimeError(f"recorder failed to start: {line!r}")
        port, log_port = line.split()[-2:]
        self.url = f"http://127.0.0.1:{port}"
        self.log_url = f"http://127.0.0.1:{log_port}"

    def mark(self) -> int:
        return int(httpx.get(self.log_url + "/_seq", timeout=5).text)

    def log(self, since: int) -> dict[str, Any]:
        return dict(httpx.get(f"{self.log_url}/_log?since={since}", timeout=5).json())

    def settled(self, since: int, timeout: float = 1.0) -> dict[str, Any]:
        """The log once no connection is mid-request (or as it is at the deadline)."""
        def quiet() -> dict[str, Any] | None:
            log = self.log(since)
            busy = [c for c in log["connections"] if c["mid_request"] or c["pending_len"]]
            return None if busy else log
        try:
            return dict(wait_until(quiet, timeout=timeout))
        except TimeoutError:
            return self.log(since)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def rig_config(upstream: str) -> dict[str, Any]:
    proxy = {"proxy": [{"action": {"serviceEndpoint": "backend"}}]}
    return {
        "server": {"headersTimeout": 500, "bodyTimeout": 500},
        "apiEndpoints": {"public": {"host": "*", "paths": ["/public/*"]},
                         "admin": {"host": "*", "paths": ["/admin/*"]},
                         "rest": {"host": "*", "paths": ["*"]}},
        "serviceEndpoints": {"backend": {"url": upstream}},
        "policies": ["key-auth", "proxy"],
        "pipelines": {"public": {"apiEndpoints": ["public", "rest"], "policies": [proxy]},
                      "admin": {"apiEndpoints": ["admin"],
                                "policies": [{"key-auth": [{"action": {}}]}, proxy]}},
    }


# -- the client's view -------------------------------------------------------------------
@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def origin_seq(self) -> int | None:
        """The origin's sequence number, if the origin wrote this answer."""
        m = _ANSWER.match(self.body) if self.status == 200 else None
        return int(m.group(1)) if m else None


@dataclass
class Answers:
    responses: list[Response] = field(default_factory=list)
    closed: bool = False
    timed_out: bool = False
    garbage: bytes = b""           # bytes that are not part of a proper response
    raw: bytes = b""


def parse_responses(data: bytes, closed: bool) -> tuple[list[Response], bytes]:
    """Responses in ``data`` (interim 1xx dropped); the rest if it is not a whole response."""
    out: list[Response] = []
    while data:
        try:
            one, rest = _parse_one(data, closed)
        except ValueError:                 # a malformed length or chunk size
            one = None
        if one is None:
            return out, data
        if one.status >= 200:              # interim 1xx answers are dropped
            out.append(one)
        data = rest
    return out, b""


def _parse_one(data: bytes, closed: bool) -> tuple[Response | None, bytes]:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None, data
    lines = head.split(b"\r\n")
    m = re.match(rb"^HTTP/1\.[01] (\d{3}) ", lines[0] + b" ")
    if not m or any(b":" not in ln for ln in lines[1:]):
        return None, data
    status = int(m.group(1))
    headers = [(k.strip().lower(), v.strip())
               for k, v in (ln.split(b":", 1) for ln in lines[1:])]
    names = dict(headers)
    if status < 200 or status in (204, 304):
        body, data = b"", rest
    elif b"content-length" in names:
        n = int(names[b"content-length"])
        if len(rest) < n:
            return None, data
        body, data = rest[:n], rest[n:]
    elif names.get(b"transfer-encoding", b"").lower() == b"chunked":
        parsed = _dechunk(rest)
        if parsed is None:
            return None, data
        body, data = parsed
    elif closed:
        body, data = rest, b""
    else:
        return None, data
    return Response(status, headers, body), data


def _dechunk(data: bytes) -> tuple[bytes, bytes] | None:
    body = b""
    while True:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            return None
        size = int(line.split(b";")[0], 16)
        if size == 0:                      # trailers end with an empty line
            if data.startswith(b"\r\n"):
                return body, data[2:]
            end = data.find(b"\r\n\r\n")
            return None if end < 0 else (body, data[end + 4:])
        if len(data) < size + 2:
            return None
        body, data = body + data[:size], data[size + 2:]


def converse(port: int, data: bytes, timeout: float = 5.0) -> Answers:
    """Send ``data`` then the probe; read until the probe is answered or the server closes."""
    answers = Answers()
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):     # refused mid-send: the answer tells why
            sock.sendall(data + PROBE)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                answers.timed_out = True
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                answers.timed_out = True
                break
            except OSError:
                chunk = b""
            if not chunk:
                answers.closed = True
                break
            answers.raw += chunk
            responses, _ = parse_responses(answers.raw, False)
            if responses and responses[-1].body.endswith(b" GET /public/_probe"):
                break
    answers.responses, answers.garbage = parse_responses(answers.raw, answers.closed)
    return answers


# -- the invariant ------------------------------------------------------------------------
def violations(sent: bytes, answers: Answers, log: dict[str, Any],
               before: dict[int, int]) -> list[str]:
    """Every way the exchange broke the invariant (see the module docstring)."""
    bad: list[str] = []
    responses = answers.responses
    if answers.timed_out:
        bad.append("the client got neither the probe's answer nor a closed connection")
    if not responses:
        bad.append(f"the client got no response (got {answers.raw[:200]!r})")
    if answers.garbage:
        bad.append(f"bytes that are not a response reached the client: {answers.garbage[:200]!r}")
    for i, r in enumerate(responses):
        if r.status in REFUSALS and (i != len(responses) - 1 or not answers.closed):
            bad.append(f"refusal {r.status} was not the last answer on a closed connection")
    for e in log["errors"]:
        bad.append(f"the origin could not parse what it got ({e['error']}): {e['unparsed']!r}")
    for c in log["connections"]:
        if c["pending_len"] and c["received"] != before.get(c["conn"]):
            bad.append(f"bytes left unparsed on an upstream connection: {c['pending']!r}")
    answered = [r.origin_seq() for r in responses]
    for rec in log["requests"]:
        where = f"{rec['method']} {rec['target']}"
        if not rec["complete"]:
            bad.append(f"the origin got an incomplete request {where}")
        if rec["seq"] not in answered:
            bad.append(f"the origin parsed {where} (#{rec['seq']}) and no client got its answer")
        if reaches_admin(rec["target"]):
            bad.append(f"{where} reached the origin without credentials")
    records = {rec["seq"]: rec for rec in log["requests"]}
    expected, why = reference(sent + PROBE)
    for i, seq in enumerate(answered):
        if seq is None:
            continue
        rec = records.get(seq)
        if rec is None:
            bad.append(f"answer {i} names origin request #{seq}, not one of this exchange")
            continue
        if i >= len(expected):
            bad.append(f"meshgate admitted request {i} ({rec['method']} {rec['target']}), "
                       f"a strict parser refuses it: {why}")
            continue
        want = expected[i]
        got = (rec["method"], normalise(rec["target"]), rec["body_sha256"])
        if got != (want.method, want.path, want.body_sha256):
            bad.append(f"request {i}: the origin parsed {got[0]} {got[1]} with a body of "
                       f"{rec['body_len']} bytes; the client sent {want.method} {want.path} "
                       f"(body sha256 {want.body_sha256[:12]}, got {got[2][:12]})")
    return bad


class Rig:
    """A gateway in front of a recorder; replaced after a test that broke it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.recorder = RecorderProcess()
        self.gateway: Gateway | None = None
        self.generation = 0
        self.dirty = True

    def fresh(self) -> Gateway:
        if self.dirty or self.gateway is None:
            if self.gateway is not None:
                self.gateway.stop()
            self.generation += 1
            folder = self.directory / f"gw{self.generation}"
            folder.mkdir()
            self.gateway = Gateway(folder, rig_config(self.recorder.url))
            self.dirty = False
        return self.gateway

    def check(self, data: bytes, timeout: float = 5.0) -> tuple[list[str], Answers, dict[str, Any]]:
        gateway = self.fresh()
        since = self.recorder.mark()
        before = {c["conn"]: c["received"] for c in self.recorder.log(since)["connections"]}
        answers = converse(gateway.port, data, timeout)
        log = self.recorder.settled(since)
        bad = violations(data, answers, log, before)
        if bad:
            self.dirty = True
        return bad, answers, log

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        self.recorder.stop()


def describe(answers: Answers, log: dict[str, Any]) -> str:
    """What happened, for an assertion message."""
    statuses = [r.status for r in answers.responses]
    parsed = [f"{r['method']} {r['target']} ({r['body_len']} B)" for r in log["requests"]]
    return json.dumps({"client statuses": statuses, "closed": answers.closed,
                       "origin parsed": parsed, "origin errors": log["errors"]}, indent=1)
