"""``meshgate registry``: run the built-in service registry; ``registry token``: its tokens.

Theory of operation
-------------------
``meshgate registry [OPTIONS]`` parses the options, then runs
``serve_registry`` on uvloop until SIGTERM or SIGINT, which stop it cleanly
(blocking queries and watch streams end, a last snapshot is written, the exit
status is 0). A port already in use, an unreachable etcd or an unusable
operator token file at start is one line on stderr and exit status 1; bad
options exit 2.

``meshgate registry token create|list|revoke`` manage join and operator
tokens where the registry keeps them: its ``--data-dir`` (``tokens.json``,
also while the registry runs), etcd (``--etcd``), or a running registry's
API (``--registry URL`` with an operator token from ``--token-file`` or
``$MESHGATE_REGISTRY_TOKEN``). ``create`` prints the token on stdout, once;
only its sha256 is stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import uvloop

from meshgate.etcdv3 import EtcdError
from meshgate.registry.base import (
    DEFAULT_DEREGISTER_CRITICAL_AFTER_MS,
    DEFAULT_ETCD_PREFIX,
    DEFAULT_PORT,
    check_name,
)
from meshgate.registry.tokens import FileTokens, TokenRecord, new_token, read_token_file

app = typer.Typer(help="The service registry: serve it (no command), manage its tokens.",
                  invoke_without_command=True, no_args_is_help=False)
token_app = typer.Typer(help="Join tokens (one service) and operator tokens of the registry.",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")

EtcdOption = Annotated[list[str] | None, typer.Option(
    "--etcd", help="etcd endpoint URL (repeat, or comma-separate, for several)")]
PrefixOption = Annotated[str, typer.Option("--etcd-prefix", help="Key prefix of the registry "
                                           "in etcd")]


def _endpoints(etcd: list[str] | None) -> list[str]:
    return [u.strip() for item in etcd or [] for u in item.split(",") if u.strip()]


@app.callback()
def registry(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535,
                                      help="Port to listen on (0: any free port)")
                    ] = DEFAULT_PORT,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Folder of the memory store's snapshot and of the tokens "
                           "(default: none, registrations and tokens are lost on restart)")
    ] = None,
    store: Annotated[str, typer.Option(help="memory or etcd")] = "memory",
    etcd: EtcdOption = None,
    etcd_prefix: PrefixOption = DEFAULT_ETCD_PREFIX,
    deregister_critical_after: Annotated[int, typer.Option(
        "--deregister-critical-after", min=0,
        help="Default ms a critical instance stays listed before removal")
    ] = DEFAULT_DEREGISTER_CRITICAL_AFTER_MS,
    operator_token_file: Annotated[Path | None, typer.Option(
        "--operator-token-file",
        help="File holding the operator token (made, mode 0600, if missing); default: "
             "DATA_DIR/operator.token, else a temporary file. $MESHGATE_REGISTRY_TOKEN "
             "is accepted too")] = None,
    require_token_for_reads: Annotated[bool, typer.Option(
        "--require-token-for-reads", help="Lists and watches need a token too")] = False,
    max_instances_per_service: Annotated[int, typer.Option(
        "--max-instances-per-service", min=1, help="Instances one service may have")] = 1024,
    max_instances_per_token: Annotated[int, typer.Option(
        "--max-instances-per-token", min=1,
        help="Instances one join token may register")] = 256,
    max_metadata: Annotated[int, typer.Option(
        "--max-metadata", min=2, help="Bytes of an instance's metadata, serialized")] = 4096,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", help="A Host name the API answers to besides localhost, loopback "
        "and its own addresses (repeat; '*': any)")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Serve the service registry API (register, heartbeat, list, watch)."""
    if ctx.invoked_subcommand is not None:
        return
    if store not in ("memory", "etcd"):
        typer.echo(f"meshgate registry: --store must be memory or etcd, not {store!r}", err=True)
        raise typer.Exit(2)
    endpoints = _endpoints(etcd)
    if store == "etcd" and not endpoints:
        typer.echo("meshgate registry: --store etcd needs --etcd URL", err=True)
        raise typer.Exit(2)
    from meshgate.registry.auth import Limits
    from meshgate.registry.server import serve_registry

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s registry %(levelname)s %(name)s: %(message)s")
    limits = Limits(max_metadata=max_metadata, max_per_service=max_instances_per_service,
                    max_per_token=max_instances_per_token)
    try:
        uvloop.run(serve_registry(
            host, port, store="etcd" if store == "etcd" else "memory", data_dir=data_dir,
            etcd_endpoints=endpoints, etcd_prefix=etcd_prefix,
            deregister_critical_after_ms=deregister_critical_after,
            operator_token_file=operator_token_file,
            require_token_for_reads=require_token_for_reads, limits=limits,
            allowed_hosts=allowed_host or ()))
    except OSError as exc:
        typer.echo(f"meshgate registry: cannot listen on {host}:{port}: "
                   f"{exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    except (RuntimeError, EtcdError) as exc:
        typer.echo(f"meshgate registry: {exc}", err=True)
        raise typer.Exit(1) from None


# -- tokens ------------------------------------------------------------------------------

DataDirOption = Annotated[Path | None, typer.Option(
    "--data-dir", help="The registry's data dir (tokens.json)")]
RegistryOption = Annotated[str | None, typer.Option(
    "--registry", help="A running registry's URL (needs an operator token)")]
TokenFileOption = Annotated[Path | None, typer.Option(
    "--token-file", help="Operator token for --registry (default $MESHGATE_REGISTRY_TOKEN)")]


class _Where:
    """Where the tokens are: a data dir, etcd, or a registry's API."""

    def __init__(self, data_dir: Path | None, etcd: list[str] | None, prefix: str,
                 registry: str | None, token_file: Path | None) -> None:
        self.data_dir, self.etcd, self.prefix = data_dir, _endpoints(etcd), prefix
        self.registry = registry.rstrip("/") if registry else None
        if sum(x is not None and x != [] for x in (data_dir, self.etcd or None,
                                                   self.registry)) != 1:
            _fail("give one of --data-dir, --etcd or --registry", 2)
        self.token = os.environ.get("MESHGATE_REGISTRY_TOKEN", "").strip()
        if self.registry is not None:
            try:
                self.token = read_token_file(token_file) if token_file else self.token
            except (OSError, ValueError) as exc:
                _fail(f"cannot read the token file: {exc}", 2)
            if not self.token:
                _fail("--registry needs an operator token: --token-file or "
                      "$MESHGATE_REGISTRY_TOKEN", 2)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = httpx.request(method, f"{self.registry}{path}", timeout=10,
                                     headers={"authorization": f"Bearer {self.token}"},
                                     **kwargs)
        except httpx.HTTPError as exc:
            _fail(f"registry {self.registry} unreachable: {exc}", 1)
        if response.status_code >= 300:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            _fail(f"{response.status_code}: {detail}", 1)
        return response.json()

    def etcd_tokens(self) -> Any:
        from meshgate.etcdv3 import EtcdClient
        from meshgate.registry.etcd_store import EtcdTokens

        return EtcdTokens(EtcdClient(self.etcd), self.prefix.rstrip("/"))

    def create(self, record: TokenRecord) -> dict[str, Any]:
        if self.registry is not None:
            body = {"description": record.description, **(
                {"operator": True} if record.service is None else {"service": record.service})}
            return dict(self.call("POST", "/v1/tokens", json=body))
        if self.data_dir is not None:
            asyncio.run(FileTokens(self.data_dir).add(record))
        else:
            asyncio.run(self._with_etcd(lambda t: t.add(record)))
        return record.public()

    def records(self) -> list[dict[str, Any]]:
        if self.registry is not None:
            return list(self.call("GET", "/v1/tokens")["tokens"])
        if self.data_dir is not None:
            return [r.public() for r in FileTokens(self.data_dir).records()]

        async def listed(tokens: Any) -> list[dict[str, Any]]:
            _, items = await tokens.client.get_prefix(tokens.prefix)
            tokens.replace(items)
            return [r.public() for r in tokens.records()]
        return list(asyncio.run(self._with_etcd(listed)))

    def revoke(self, token_id: str) -> bool:
        if self.registry is not None:
            self.call("DELETE", f"/v1/tokens/{token_id}")
            return True
        if self.data_dir is not None:
            return asyncio.run(FileTokens(self.data_dir).remove(token_id))
        return bool(asyncio.run(self._with_etcd(lambda t: t.remove(token_id))))

    async def _with_etcd(self, action: Any) -> Any:
        tokens = self.etcd_tokens()
        try:
            return await action(tokens)
        except EtcdError as exc:
            _fail(str(exc), 1)
        finally:
            await tokens.client.close()


def _fail(message: str, code: int) -> Any:
    typer.echo(f"meshgate registry token: {message}", err=True)
    raise typer.Exit(code)


@token_app.command("create")
def token_create(
    service: Annotated[str | None, typer.Option(help="The service a join token is for")] = None,
    operator: Annotated[bool, typer.Option("--operator", help="An operator token "
                                           "(every service, token management)")] = False,
    description: Annotated[str, typer.Option(help="A note shown by list")] = "",
    data_dir: DataDirOption = None, etcd: EtcdOption = None,
    etcd_prefix: PrefixOption = DEFAULT_ETCD_PREFIX, registry: RegistryOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Make a token and print it (shown this once; only its hash is kept)."""
    if operator == (service is not None):
        _fail("give either --service NAME or --operator", 2)
    if service is not None:
        try:
            check_name("service", service)
        except ValueError as exc:
            _fail(str(exc), 2)
    where = _Where(data_dir, etcd, etcd_prefix, registry, token_file)
    record, token = new_token(service, description)
    made = where.create(record)
    token = made.get("token", token)
    what = "operator token" if made.get("operator") else f"join token for {made['service']!r}"
    typer.echo(f"{what} {made['id']} (shown once, keep it secret):", err=True)
    typer.echo(token)


@token_app.command("list")
def token_list(data_dir: DataDirOption = None, etcd: EtcdOption = None,
               etcd_prefix: PrefixOption = DEFAULT_ETCD_PREFIX,
               registry: RegistryOption = None, token_file: TokenFileOption = None) -> None:
    """Every token: id, service (or operator), created, description."""
    records = _Where(data_dir, etcd, etcd_prefix, registry, token_file).records()
    typer.echo(f"{'ID':<14}{'SERVICE':<24}{'CREATED':<22}DESCRIPTION")
    for item in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["created"] / 1000))
        service = "(operator)" if item["operator"] else str(item["service"])
        typer.echo(f"{item['id']:<14}{service:<24}{created:<22}{item['description']}")


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(help="The token's id (see list)")],
                 data_dir: DataDirOption = None, etcd: EtcdOption = None,
                 etcd_prefix: PrefixOption = DEFAULT_ETCD_PREFIX,
                 registry: RegistryOption = None, token_file: TokenFileOption = None) -> None:
    """Revoke a token: it stops working (within a second); its instances lapse at their ttl."""
    where = _Where(data_dir, etcd, etcd_prefix, registry, token_file)
    if not where.revoke(token_id):
        _fail(f"unknown token {token_id}", 1)
    typer.echo(f"revoked {token_id}")
