"""Example service: invoices, kept in memory.

Run: python examples/services/invoices.py --port 5002
"""

from __future__ import annotations

from common import App, Request, Response, error

app = App("invoices")
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


if __name__ == "__main__":
    app.serve()
