"""Make sure wrk, nginx, HAProxy and Express Gateway are available; say what is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy"}
EG_VERSION = "1.16.11"


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    def quiet(cmd: list[str]) -> int:
        return subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode

    if quiet(argv) != 0:
        quiet(["apt-get", "update"])
        quiet(argv)


def ensure_system_tools() -> dict[str, bool]:
    """Install missing Debian packages if possible; report which tools exist."""
    missing = [pkg for tool, pkg in APT_PACKAGES.items() if shutil.which(tool) is None]
    if missing:
        print(f"installing {' '.join(missing)} ...", flush=True)
        _apt_install(missing)
    have = {tool: shutil.which(tool) is not None for tool in APT_PACKAGES}
    for tool, ok in have.items():
        if not ok:
            print(f"MISSING {tool}: install it with "
                  f"`apt-get install -y --no-install-recommends {APT_PACKAGES[tool]}`")
    return have


def ensure_express_gateway(prefix: Path) -> bool:
    """npm-install express-gateway into ``prefix`` unless it is already there."""
    package = prefix / "node_modules" / "express-gateway" / "package.json"
    if package.exists():
        return True
    if shutil.which("node") is None or shutil.which("npm") is None:
        print("MISSING node/npm: install Node.js >= 18 with npm (e.g. `apt-get install nodejs "
              "npm`); Express Gateway is skipped")
        return False
    prefix.mkdir(parents=True, exist_ok=True)
    print(f"installing express-gateway@{EG_VERSION} into {prefix} ...", flush=True)
    argv = ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
            f"express-gateway@{EG_VERSION}"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not package.exists():
        print(done.stderr[-2000:])
        print(f"MISSING express-gateway: run `{' '.join(argv)}`; Express Gateway is skipped")
        return False
    return True


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def versions(eg_prefix: Path) -> dict[str, str]:
    out = {
        "wrk": _first_line(["wrk", "--version"]).split(" [")[0],
        "nginx": _first_line(["nginx", "-v"]).split(": ")[-1],
        "haproxy": " ".join(_first_line(["haproxy", "-v"]).split()[:3]),
        "node": _first_line(["node", "--version"]),
    }
    package = eg_prefix / "node_modules" / "express-gateway" / "package.json"
    if package.exists():
        out["express-gateway"] = json.loads(package.read_text())["version"]
    return out
