"""The API is a declared contract: the schema the service serves is the one committed in docs/openapi.json.

A change to a route, a parameter or a response model changes the served schema; this test then fails until
the committed file is regenerated, so every contract change is a deliberate, reviewed diff."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient
from hpcdock_service.api import OPENAPI_FILE, openapi_text, schema_app

REPO = Path(__file__).resolve().parents[2]
REGENERATE = f"hpcdock-service --openapi > {OPENAPI_FILE}"


def served_schema() -> dict:
    http = TestClient(schema_app(token="t"), base_url="http://localhost")
    assert http.get("/openapi.json").status_code == 401  # the stand-in serves like the service: token first
    resp = http.get("/openapi.json", headers={"Authorization": "Bearer t"})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_the_served_schema_is_the_committed_contract() -> None:
    committed = json.loads((REPO / OPENAPI_FILE).read_text())
    served = served_schema()
    changed = sorted(set(served["paths"]) ^ set(committed["paths"])) or sorted(
        p for p in served["paths"] if served["paths"][p] != committed["paths"].get(p)
    )
    assert served == committed, (
        f"the API's schema differs from {OPENAPI_FILE} (paths: {', '.join(changed) or 'none; see components'}). "
        f"If the change is meant, regenerate it with `{REGENERATE}` and commit it with the change."
    )


def test_the_committed_file_is_in_the_generated_form() -> None:
    text = (REPO / OPENAPI_FILE).read_text()
    assert text == openapi_text(json.loads(text)), (
        f"{OPENAPI_FILE} was edited by hand; regenerate: {REGENERATE}"
    )
