"""Private redis-server processes on free loopback ports: TLS, and Sentinel.

``RedisServer(tmp_path)`` is a plain server; ``tls=True`` serves TLS only,
with a fresh CA and server certificate (``ca_file``); ``Sentinel(tmp_path,
master)`` is a sentinel monitoring ``master`` as ``mymaster``. Nothing is
persisted; ``stop()`` kills the process. ``available()`` says whether
redis-server is installed (the shared 127.0.0.1:6379 is for other tests).
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import time
from pathlib import Path

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.gateway import free_port

BINARY = shutil.which("redis-server")


def available() -> bool:
    return BINARY is not None


class RedisServer:
    def __init__(self, directory: Path, tls: bool = False) -> None:
        assert BINARY is not None
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        args = [BINARY, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(directory)]
        if tls:
            self.ca_file, cert, key = _certificates(directory)
            args += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                     "--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        self.log = (directory / "redis.log").open("wb")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        _wait(self.client, self.process)

    def client(self) -> redis.Redis:
        if self.tls:
            return redis.Redis(host="127.0.0.1", port=self.port, ssl=True,
                               ssl_ca_certs=str(self.ca_file), socket_timeout=2)
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.log.close()


class Sentinel:
    """A sentinel that knows ``master`` as ``mymaster`` (quorum 1)."""

    def __init__(self, directory: Path, master: RedisServer) -> None:
        assert BINARY is not None
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = directory / "sentinel.conf"         # a sentinel rewrites its own config
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
                        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n")
        self.log = (directory / "sentinel.log").open("wb")
        self.process = subprocess.Popen([BINARY, str(conf), "--sentinel"], stdout=self.log,
                                        stderr=subprocess.STDOUT)
        _wait(self.client, self.process)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.log.close()


def _wait(client: object, process: subprocess.Popen[bytes], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        try:
            if client().ping():                          # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not answer")
        time.sleep(0.05)


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1 / localhost: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshgate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return paths
