"""TLS termination on the ``https`` listener: SNI certificate choice, versions, proxying.

A CA and three leaf certificates (``a.example.com``, ``*.wild.example.com``
and a default) are made with ``cryptography`` in tmp_path for each test
module; clients verify against that CA and read which certificate they got
from its subjectAltName.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.gateway import Gateway, free_port, proxy_config


# -- certificates ------------------------------------------------------------------
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class Pki:
    """A CA and leaf certificates signed by it, as PEM files in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        now = datetime.datetime.now(datetime.UTC)
        self.valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=7))
        self.ca_key = _key()
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("meshgate test CA")).issuer_name(_name("meshgate test CA"))
            .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self.valid[0]).not_valid_after(self.valid[1])
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.ca_key, hashes.SHA256()))
        self.ca_path = directory / "ca.crt"
        self.ca_path.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, stem: str, dns_name: str) -> dict[str, str]:
        key = _key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(dns_name)).issuer_name(self.ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self.valid[0]).not_valid_after(self.valid[1])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(self.ca_key, hashes.SHA256()))
        path = self.directory / stem
        _write(path, key, cert)
        return {"key": str(path.with_suffix(".key")), "cert": str(path.with_suffix(".crt"))}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, dict[str, dict[str, str]]]:
    p = Pki(tmp_path_factory.mktemp("pki"))
    tls = {
        "a.example.com": p.leaf("a", "a.example.com"),
        "*.wild.example.com": p.leaf("wild", "*.wild.example.com"),
        "default": p.leaf("default", "default.example.com"),
    }
    return p, tls


@pytest.fixture
def tls_gw(pki, backend, gateway_factory) -> Gateway:
    _, tls = pki
    config = proxy_config(backend.url)
    config["https"] = {"port": free_port(), "hostname": "127.0.0.1", "tls": tls}
    return gateway_factory(config)


def https_port(gw: Gateway) -> int:
    return int(gw.config["https"]["port"])


# -- a client ----------------------------------------------------------------------
def client_context(pki: Pki, **options: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_path))
    ctx.check_hostname = False          # we look at which certificate came back
    for name, value in options.items():
        setattr(ctx, name, value)
    return ctx


def handshake(port: int, ctx: ssl.SSLContext, server_name: str | None) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        return {"cert": tls.getpeercert(), "version": tls.version(),
                "alpn": tls.selected_alpn_protocol()}


def dns_names(cert: dict[str, Any]) -> list[str]:
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]


def common_name(cert: dict[str, Any]) -> str:
    return next(v for rdn in cert["subject"] for k, v in rdn if k == "commonName")


# -- SNI -------------------------------------------------------------------------------
@pytest.mark.parametrize(("server_name", "expected"), [
    ("a.example.com", "a.example.com"),
    ("A.Example.COM", "a.example.com"),
    ("x.wild.example.com", "*.wild.example.com"),
    ("other.wild.example.com", "*.wild.example.com"),
    ("deep.x.wild.example.com", "default.example.com"),   # a wildcard covers one label
    ("wild.example.com", "default.example.com"),
    ("unknown.example.org", "default.example.com"),
    (None, "default.example.com"),                          # no SNI at all
])
def test_sni_selects_the_certificate(pki, tls_gw, server_name, expected) -> None:
    ca, _ = pki
    result = handshake(https_port(tls_gw), client_context(ca), server_name)
    assert dns_names(result["cert"]) == [expected]
    assert common_name(result["cert"]) == expected


def test_exact_name_verifies_with_hostname_checking(pki, tls_gw) -> None:
    ca, _ = pki
    ctx = ssl.create_default_context(cafile=str(ca.ca_path))
    result = handshake(https_port(tls_gw), ctx, "a.example.com")
    assert result["version"] in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(https_port(tls_gw), ctx, "b.example.com")   # gets the default cert


def test_one_connection_after_another_keeps_choosing_per_handshake(pki, tls_gw) -> None:
    ca, _ = pki
    ctx = client_context(ca)
    names = ["a.example.com", "q.wild.example.com", "nope.test", "a.example.com", None]
    seen = [dns_names(handshake(https_port(tls_gw), ctx, n)["cert"])[0] for n in names]
    assert seen == ["a.example.com", "*.wild.example.com", "default.example.com",
                    "a.example.com", "default.example.com"]


# -- versions ----------------------------------------------------------------------------
def _client_can_speak_tls11(pki: Pki, tls: dict[str, dict[str, str]]) -> bool:
    """Whether this OpenSSL completes a TLS 1.1 handshake with a server that allows it."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        server_ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        server_ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        server_ctx.load_cert_chain(tls["default"]["cert"], tls["default"]["key"])
        client_ctx = _tls11_client(pki)
    except (ssl.SSLError, ValueError):
        return False
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.recv(1)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        return handshake(port, client_ctx, "default.example.com")["version"] == "TLSv1.1"
    except (ssl.SSLError, OSError):
        return False
    finally:
        listener.close()
        thread.join(5)


def _tls11_client(pki: Pki) -> ssl.SSLContext:
    ctx = client_context(pki)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused(pki, tls_gw) -> None:
    ca, tls = pki
    if not _client_can_speak_tls11(ca, tls):
        pytest.skip("the local OpenSSL will not negotiate TLS 1.1 at all")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(https_port(tls_gw), _tls11_client(ca), "a.example.com")
    # the refusal cost nothing: TLS 1.2 still works
    ok = handshake(https_port(tls_gw), client_context(
        ca, maximum_version=ssl.TLSVersion.TLSv1_2), "a.example.com")
    assert ok["version"] == "TLSv1.2"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_accepted(pki, tls_gw, version) -> None:
    ca, _ = pki
    ctx = client_context(ca, minimum_version=version, maximum_version=version)
    result = handshake(https_port(tls_gw), ctx, "x.wild.example.com")
    assert result["version"] == version.name.replace("v1_", "v1.")
    assert dns_names(result["cert"]) == ["*.wild.example.com"]


def test_alpn_offers_h2_and_http_1_1_with_every_certificate(pki, tls_gw) -> None:
    ca, _ = pki
    for offered, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
        ctx = client_context(ca)
        ctx.set_alpn_protocols(offered)
        for name in ("a.example.com", "x.wild.example.com", "unknown.test"):
            assert handshake(https_port(tls_gw), ctx, name)["alpn"] == chosen


# -- requests over TLS ---------------------------------------------------------------------
def https_request(port: int, ctx: ssl.SSLContext, server_name: str, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        tls.sendall(request)
        data = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            data += chunk
        return data


def test_request_over_tls_is_proxied_with_forwarded_proto_https(pki, tls_gw) -> None:
    ca, _ = pki
    response = https_request(
        https_port(tls_gw), client_context(ca), "a.example.com",
        b"GET /echo?q=1 HTTP/1.1\r\nHost: a.example.com\r\nX-Forwarded-Proto: http\r\n"
        b"Connection: close\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    echoed = json.loads(body)
    headers = [(k.lower(), v) for k, v in echoed["headers"]]
    assert echoed["path"] == "/echo?q=1"
    assert [v for k, v in headers if k == "x-forwarded-proto"] == ["https"]
    assert ("x-forwarded-host", "a.example.com") in headers
    # and plain HTTP on the http port still says http
    with socket.create_connection(("127.0.0.1", tls_gw.port), timeout=5) as plain:
        plain.sendall(b"GET /echo HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := plain.recv(65536):
            data += chunk
    headers = [(k.lower(), v) for k, v in json.loads(data.partition(b"\r\n\r\n")[2])["headers"]]
    assert [v for k, v in headers if k == "x-forwarded-proto"] == ["http"]


def test_plaintext_on_the_tls_port_is_dropped_and_costs_nothing(pki, tls_gw) -> None:
    ca, _ = pki
    pids = tls_gw.pids()
    with socket.create_connection(("127.0.0.1", https_port(tls_gw)), timeout=5) as raw:
        raw.sendall(b"GET /echo HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        try:
            data = raw.recv(65536)
            while data and (more := raw.recv(65536)):
                data += more
        except ConnectionResetError:
            data = b""
    assert b"Traceback" not in data and b"ok backend" not in data
    response = https_request(https_port(tls_gw), client_context(ca), "a.example.com",
                             b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"ok backend\n")
    assert tls_gw.pids() == pids
