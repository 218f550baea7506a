"""Confidentiality canary (reliability-security.md 7.5 M8): the broker never holds plaintext.

Alerts and feedback whose bodies carry a unique marker go through the whole HTTP exchange
(submit, delivery relay, poll, acknowledge), plus a refused submission, with JSON logs at DEBUG
and the production profile's wake-ups and Redis in use. The recipients open their envelopes and
find the marker (the canary is real); then the marker is searched for, plain and base64 /
base64url-encoded at every alignment, in:

- every row of every table (all columns), read back through SQLAlchemy;
- the database as stored: `pg_dump` of the test database, or the SQLite file and its WAL;
- every key and value in the test Redis database (rate-limit counts, Celery messages);
- the Celery task messages the broker published, as they sit in Redis;
- the application's log output (stderr, and the log records themselves);
- every HTTP response the clients received.

It must appear nowhere: the broker stores and forwards ciphertext only.
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import MetaData, select
from sqlalchemy.engine import make_url

from broker import db, jobs
from broker.config import Profile, settings
from broker.crypto import envelope as env
from broker.logging import configure_logging
from tests.hostile.leaks import needles
from tests.messages.conftest import Exchange, relay

pytestmark = pytest.mark.hostile


def _hits(haystack: bytes, marks: list[bytes]) -> list[bytes]:
    return [m for m in marks if m in haystack]


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogateescape")
    return str(value).encode("utf-8", "surrogateescape")


async def _database_rows() -> dict[str, bytes]:
    """Every table the database has (not only the models), every row, every column."""
    meta = MetaData()
    dump: dict[str, bytes] = {}
    async with db.engine().connect() as conn:
        await conn.run_sync(meta.reflect)
        for table in meta.sorted_tables:
            rows = (await conn.execute(select(table))).all()
            dump[table.name] = b"\x1e".join(b"\x1f".join(_as_bytes(v) for v in row) for row in rows)
    return dump


def _database_as_stored(backend: str) -> bytes:
    url = make_url(settings().sqlalchemy_url)
    if backend == "sqlite":
        path = Path(str(url.database))
        files = [path, path.with_name(path.name + "-wal")]
        return b"".join(p.read_bytes() for p in files if p.exists())
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    done = subprocess.run(
        ["pg_dump", "--data-only", "--no-owner", plain],
        capture_output=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        pytest.skip(f"pg_dump failed: {done.stderr.decode()[:300]}")
    return done.stdout


def _redis_everything(url: str) -> bytes:
    client = redis.Redis.from_url(url)
    out: list[bytes] = []
    for key in client.scan_iter(count=500):
        out.append(key)
        kind = client.type(key)
        if kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"list":
            out.extend(client.lrange(key, 0, -1))
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                out += [field, value]
        elif kind == b"set":
            out.extend(client.smembers(key))
        elif kind == b"zset":
            out.extend(member for member, _ in client.zrange(key, 0, -1, withscores=True))
        elif kind == b"stream":
            out.append(repr(client.xrange(key)).encode())
    return b"\x1e".join(out)


class _Wakeups:
    """Stands in for the production publisher: records what would be sent to Celery."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def request(self, name: str) -> None:
        self.names.append(name)


def test_marker_appears_nowhere_but_inside_the_ciphertext(
    exchange: Exchange,
    backend: str,
    redis_url: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = f"CANARY-{secrets.token_hex(16)}".encode()
    marks = needles(marker)
    assert len(marks) >= 5  # plain, hex, base64 at three alignments (and url-safe)
    # The searches find the marker when it is there, whatever the encoding.
    import base64

    for probe in (b"x" + marker, b"xy" + marker + b"z", b"xyz" + marker):
        assert _hits(base64.b64encode(probe), marks)
        assert _hits(base64.urlsafe_b64encode(probe), marks)

    # Production wiring: wake-ups for Celery and rate-limit counts in Redis.
    wakeups = _Wakeups()
    monkeypatch.setattr(settings(), "profile", Profile.production)
    monkeypatch.setattr(settings(), "redis_url", redis_url)
    monkeypatch.setattr(jobs, "_publisher", lambda: wakeups)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("DEBUG", json=True)  # JSON lines to stderr (captured by capfd) ...
    root.addHandler(caplog.handler)  # ... and the records themselves
    caplog.set_level("DEBUG")
    # SQL statements with their parameters and result rows: the envelope and everything read.
    caplog.set_level("DEBUG", logger="sqlalchemy.engine")
    responses: list[bytes] = []
    try:
        text = marker.decode()
        body = {
            "title": f"Suspected ivory {text}",
            "summary": f"X-ray anomalies; reference {text}",
            "subjects": [],
        }
        sent: list[tuple[dict[str, Any], str]] = []
        plans = [
            {},
            {
                "recipients": ["CN-GACC", "HK-CED", "KR-KCS"],
                "agreement": "MEKONG-DRAGON",
                "operation": "MEKONG-DRAGON-V",
                "offence": "narcotics",
                "subject_types": ["conveyance", "person"],
            },
        ]
        for plan in plans:
            routing = exchange.routing("VN-GDC/fp-hcm-01", **plan)
            envelope = exchange.envelope(routing, body)
            response = exchange.submit(envelope, routing)
            assert response.status_code == 201, response.text
            responses.append(response.content)
            sent.append((routing, envelope))
        # A refused one too: only its hash may be kept.
        refused_routing = exchange.routing("VN-GDC/fp-hcm-01", recipients=["NZ-POL"])
        refused = exchange.submit(exchange.envelope(refused_routing, body), refused_routing)
        assert refused.status_code == 403
        responses.append(refused.content)

        relay()
        opened = 0
        for agency in ("HK-CED", "CN-GACC", "KR-KCS"):
            page = exchange.client.get("/v1/inbox", headers=exchange.agency_headers(agency))
            assert page.status_code == 200, page.text
            responses.append(page.content)
            for item in page.json()["items"]:
                routing = next(r for r, e in sent if e == item["envelope"])
                alert = env.open_envelope(
                    item["envelope"],
                    my_agency=agency,
                    my_enc_keys=[exchange.encryption[agency]],
                    sender_sig_jwk=exchange.signing[routing["sender_fp"]].public,
                )
                assert text in alert.body["title"]  # the canary is really in there
                opened += 1
                acked = exchange.ack(agency, routing["mid"], item["envelope"])
                assert acked.status_code == 200, acked.text
                responses.append(acked.content)
        assert opened == 4
        # Feedback from a recipient, with the marker in its body as well.
        feedback = exchange.routing(
            "HK-CED/fp-01",
            kind="feedback",
            recipients=["VN-GDC"],
            agreement="MEKONG-DRAGON",
            operation="MEKONG-DRAGON-V",
            offence="narcotics",
            subject_types=["seizure"],
            in_reply_to=sent[1][0]["mid"],
            outcome="seized",
        )
        answer = exchange.submit(
            exchange.envelope(feedback, {"summary": text, "subjects": []}), feedback
        )
        assert answer.status_code == 201, answer.text
        responses.append(answer.content)
        relay()
        status = exchange.client.get(
            f"/v1/messages/{sent[1][0]['mid']}", headers=exchange.fp_headers("VN-GDC/fp-hcm-01")
        )
        responses.append(status.content)
        auditor = exchange.token_for("auditor", audit_agencies=["VN-GDC", "HK-CED"])
        events = exchange.client.get(
            "/v1/audit/events", headers={"Authorization": f"Bearer {auditor}"}
        )
        responses.append(events.content)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])

    # Celery: replay the recorded wake-ups through a Celery app on the test Redis, so the
    # messages sit in Redis as the broker's publisher would leave them.
    assert wakeups.names, "no wake-up was published"
    from broker.workers.celery_app import make_celery

    celery = make_celery()
    for name in wakeups.names:
        celery.send_task(name)
    celery.close()

    found: dict[str, list[bytes]] = {}
    for table, data in db.run(_database_rows).items():
        if hits := _hits(data, marks):
            found[f"table {table}"] = hits
    stored = _database_as_stored(backend)
    assert sent[0][1][-40:].encode() in stored  # the dump holds the envelopes it searches
    if hits := _hits(stored, marks):
        found["database file / pg_dump"] = hits
    redis_bytes = _redis_everything(redis_url)
    assert b"celery" in redis_bytes or b"_kombu" in redis_bytes  # the task messages are there
    if hits := _hits(redis_bytes, marks):
        found["redis"] = hits
    if hits := _hits(" ".join(wakeups.names).encode(), marks):
        found["celery task names"] = hits
    out, err = capfd.readouterr()
    logs = (out + err).encode("utf-8", "surrogateescape")
    assert logs.count(b'"event": "request"') >= 8  # the access log of every request above
    assert sent[0][1][-40:].encode() in logs  # statement logging saw the stored envelope
    if hits := _hits(logs, marks):
        found["log output"] = hits
    records = "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records).encode(
        "utf-8", "surrogateescape"
    )
    if hits := _hits(records, marks):
        found["log records"] = hits
    for i, content in enumerate(responses):
        if hits := _hits(content, marks):
            found[f"HTTP response {i}"] = hits
    assert not found, f"the canary leaked: {found}"
