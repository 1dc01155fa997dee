"""A real dnsmasq on a free loopback port, for the DNS discovery tests.

``Dnsmasq(tmp_path, domain="test")`` serves only local data for ``domain``
(``--local``: other names under it are NXDOMAIN; names outside it are
REFUSED since there is no upstream). A records come from an addn-hosts file
(``set_hosts``; re-read on SIGHUP, so the port stays up); SRV records and
``host-record`` entries are command-line options, so ``set_srv`` restarts
the process on the same port. ``available()`` says whether the binary exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query

from tests.support.gateway import free_port

BINARY = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.path.exists(
    "/usr/sbin/dnsmasq") else None)

# (name, target, port, priority, weight)
SrvRecord = tuple[str, str, int, int, int]


def available() -> bool:
    return BINARY is not None


def free_udp_tcp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


class Dnsmasq:
    def __init__(self, directory: Path, *, domain: str = "test", local_ttl: int = 1) -> None:
        if BINARY is None:
            raise RuntimeError("dnsmasq is not installed")
        self.directory = directory
        self.domain = domain
        self.local_ttl = local_ttl
        self.port = free_udp_tcp_port()
        self.hosts_file = directory / "dnsmasq.hosts"
        self.hosts_file.write_text("")
        self.srv: list[SrvRecord] = []
        self.host_records: dict[str, list[str]] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "dnsmasq.log"

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        assert BINARY is not None
        cmd = [BINARY, "--keep-in-foreground", f"--port={self.port}",
               "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
               "--conf-file=/dev/null", f"--addn-hosts={self.hosts_file}",
               f"--local=/{self.domain}/", f"--local-ttl={self.local_ttl}",
               f"--pid-file={self.directory / 'dnsmasq.pid'}", "--user=root",
               "--log-facility=-"]
        for name, target, port, prio, weight in self.srv:
            cmd.append(f"--srv-host={name},{target},{port},{prio},{weight}")
        for name, addresses in self.host_records.items():
            cmd.append(f"--host-record={name},{','.join(addresses)}")
        return cmd

    def start(self) -> Dnsmasq:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {self.log_path.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("dnsmasq did not answer")
            time.sleep(0.02)
        return self

    def answers(self) -> bool:
        query = dns.message.make_query(f"probe.{self.domain}", "A")
        try:
            dns.query.udp(query, "127.0.0.1", timeout=0.2, port=self.port)
        except (OSError, dns.exception.Timeout):
            return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def set_hosts(self, hosts: dict[str, list[str]]) -> None:
        """Rewrite the addn-hosts file (name -> addresses) and make dnsmasq re-read it."""
        lines = [f"{address} {name}" for name, addresses in hosts.items()
                 for address in addresses]
        tmp = self.hosts_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.hosts_file)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    def set_srv(self, records: list[SrvRecord],
                host_records: dict[str, list[str]] | None = None) -> None:
        """Replace the SRV (and host-record) data: a restart on the same port."""
        self.srv = list(records)
        if host_records is not None:
            self.host_records = dict(host_records)
        if self.process is not None:
            self.stop()
            self.start()
