"""Console fixtures: real exchanges through the API, then an auditor signed in to the console."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from tests.audit.conftest import sequence_all
from tests.messages.conftest import Exchange, exchange, relay  # noqa: F401

# Put in every alert's encrypted body: it must never appear on any console page.
MARKER = "PLAINTEXT-MARKER-7f3a"
BODY = {
    "title": f"Ivory in a reefer container {MARKER}",
    "summary": f"X-ray anomalies consistent with tusks {MARKER}",
    "subjects": [],
}
CSP = "default-src 'none'"


@dataclass
class Traffic:
    """What the exchange fixture did; ids and hashes to look for on the pages."""

    hk: str  # VN-GDC -> HK-CED: delivered, fetched, acknowledged "decrypted"
    kr: str  # VN-GDC -> KR-KCS: delivered, fetched, acknowledged "rejected" (label_mismatch)
    nz: str  # VN-MPS -> NZ-POL: delivered, not fetched
    refused: str  # VN-GDC -> HK-CED with an offence the agreement does not cover
    refused_sha256: str


def _send(ex: Exchange, fp: str, **routing: Any) -> tuple[str, str, Any]:
    r = ex.routing(fp, **routing)
    envelope = ex.envelope(r, body=BODY)
    return r["mid"], envelope, ex.submit(envelope, r)


@pytest.fixture
def traffic(exchange: Exchange) -> Traffic:  # noqa: F811 - the imported fixture
    """Three accepted alerts, one refused attempt, deliveries, fetches and acknowledgements."""
    client = exchange.client
    hk, hk_env, sent = _send(exchange, "VN-GDC/fp-hcm-01")
    assert sent.status_code == 201, sent.text
    kr, kr_env, sent = _send(
        exchange,
        "VN-GDC/fp-hcm-01",
        recipients=["KR-KCS"],
        agreement="VN-KR-CUSTOMS",
        offence="narcotics",
    )
    assert sent.status_code == 201, sent.text
    nz, _, sent = _send(
        exchange,
        "VN-MPS/fp-01",
        recipients=["NZ-POL"],
        agreement="VN-NZ-TNC-2019",
        offence="human_trafficking",
        subject_types=["person"],
    )
    assert sent.status_code == 201, sent.text
    refused, _, sent = _send(exchange, "VN-GDC/fp-hcm-01", offence="human_trafficking")
    assert sent.status_code == 403, sent.text
    assert sent.json()["code"] == "scope.offence_not_covered"
    relay()
    for agency in ("HK-CED", "KR-KCS"):
        page = client.get("/v1/inbox", headers=exchange.agency_headers(agency))
        assert page.status_code == 200, page.text
    assert exchange.ack("HK-CED", hk, hk_env).status_code == 200
    assert exchange.ack("KR-KCS", kr, kr_env, "rejected", "label_mismatch").status_code == 200
    sequence_all()
    from broker import db
    from broker.audit import repository

    (event,) = db.call(repository.list_events, kind="msg.rejected")
    refused_sha256 = str(event.details["envelope_sha256"])
    return Traffic(hk=hk, kr=kr, nz=nz, refused=refused, refused_sha256=refused_sha256)


def sign_in(client: Any, token: str) -> Any:
    """POST the sign-in form as a browser on this origin would."""
    response = client.post(
        "/console/login",
        data={"token": token},
        headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return response


@pytest.fixture
def auditor(client: Any, token_for: Any) -> str:
    """A console session for an auditor who oversees every agency; returns the token."""
    token: str = token_for("auditor")
    sign_in(client, token)
    return token


def same_origin() -> dict[str, str]:
    return {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}


def form_token(client: Any) -> str:
    """The anti-forgery token the console's pages put in their forms for this session."""
    page = client.get("/console/agreements")
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, "no form token on the page"
    return found.group(1)


def finish_runs(timeout_s: float = 30.0) -> None:
    """Run the queued full verification now, and wait for one under way (the ticker's) to end."""
    import time

    from broker import db
    from broker.console import jobs, repository

    deadline = time.monotonic() + timeout_s
    while True:
        jobs.verify_pending()
        if db.call(repository.active_run) is None:
            return
        assert time.monotonic() < deadline, "a full verification run did not end"
        time.sleep(0.05)


def text_of(html: str) -> str:
    """The visible text of a page, roughly (tags dropped, whitespace collapsed)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def new_mid() -> str:
    return str(uuid.uuid4())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The browser test runs once, on the embedded default (the HTTP tests cover both backends)."""
    drop = [
        item
        for item in items
        if item.path.name == "test_browser.py"
        and getattr(item, "callspec", None) is not None
        and item.callspec.params.get("backend") == "postgresql"
    ]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if item not in drop]
