"""Example service: invoices, kept in memory.

Run: python examples/services/invoices.py --port 5002

``GET /invoices/by-user/{userId}`` joins a user's invoices with the user
record, which it fetches from the *users* service at ``$USERS_URL`` (default
``http://users``). The service name is the whole address: in the demo,
``HTTP_PROXY`` points urllib at this replica's meshgate sidecar, whose
outbound port resolves ``users`` through the registry, balances over the
healthy replicas and retries a failed attempt -- none of that is code here.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from common import App, Request, Response, error

app = App("invoices")
USERS_URL = os.environ.get("USERS_URL", "http://users").rstrip("/")
INVOICES: dict[int, dict[str, object]] = {
    1: {"id": 1, "userId": 1, "amount": 120.00, "currency": "EUR", "status": "paid"},
    2: {"id": 2, "userId": 1, "amount": 75.50, "currency": "EUR", "status": "open"},
    3: {"id": 3, "userId": 2, "amount": 990.00, "currency": "USD", "status": "overdue"},
}


@app.route("GET", "/invoices")
def list_invoices(req: Request) -> Response:
    return 200, list(INVOICES.values())


@app.route("GET", "/invoices/{id}")
def get_invoice(req: Request) -> Response:
    invoice_id = req.params["id"]
    invoice = INVOICES.get(int(invoice_id)) if invoice_id.isdigit() else None
    return (200, invoice) if invoice else error(404, f"invoice {invoice_id} not found")


@app.route("GET", "/invoices/by-user/{userId}")
def invoices_of_user(req: Request) -> Response:
    user_id = req.params["userId"]
    if not user_id.isdigit():
        return error(404, f"user {user_id} not found")
    status, user = fetch_user(user_id)
    if status == 404:
        return error(404, f"user {user_id} not found")
    if status != 200:
        detail = f"{status} {user}" if status else user
        return error(502, f"the users service failed: {detail}")
    invoices = [inv for inv in INVOICES.values() if inv["userId"] == int(user_id)]
    return 200, {"user": user, "invoices": invoices}


def fetch_user(user_id: str) -> tuple[int, Any]:
    """GET the user from the users service: (status, decoded body), or (0, reason)."""
    try:  # urlopen honours HTTP_PROXY: in the demo, that is the sidecar's outbound port
        with urllib.request.urlopen(f"{USERS_URL}/users/{user_id}", timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace").strip()
    except (OSError, ValueError) as err:
        return 0, str(getattr(err, "reason", err))


if __name__ == "__main__":
    app.serve()
