"""Example service: users, kept in memory.

Run: python examples/services/users.py --port 5001 [--name users-1]

A single user carries ``servedBy``, the replica that answered (``--name``), so
callers can see the mesh balance requests over replicas. Each replica keeps
its own copy of the data: a user created through one is unknown to the others.
"""

from __future__ import annotations

import threading

from common import App, Request, Response, error

app = App("users")
FIELDS = ("name", "email")
lock = threading.Lock()
USERS: dict[int, dict[str, object]] = {
    1: {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"},
    2: {"id": 2, "name": "Grace Hopper", "email": "grace@example.com"},
    3: {"id": 3, "name": "Alan Turing", "email": "alan@example.com"},
}


@app.route("GET", "/users")
def list_users(req: Request) -> Response:
    with lock:
        return 200, list(USERS.values())


@app.route("GET", "/users/{id}")
def get_user(req: Request) -> Response:
    user_id = req.params["id"]
    with lock:
        user = USERS.get(int(user_id)) if user_id.isdigit() else None
    if user is None:
        return error(404, f"user {user_id} not found")
    return 200, {**user, "servedBy": app.replica}


@app.route("POST", "/users")
def create_user(req: Request) -> Response:
    body = req.body
    if not (isinstance(body, dict) and all(isinstance(body.get(k), str) for k in FIELDS)):
        return error(400, 'expected a JSON object like {"name": "...", "email": "..."}')
    with lock:
        new_id = max(USERS, default=0) + 1
        USERS[new_id] = {"id": new_id, "name": body["name"], "email": body["email"]}
        return 201, {**USERS[new_id], "servedBy": app.replica}


if __name__ == "__main__":
    app.serve()
