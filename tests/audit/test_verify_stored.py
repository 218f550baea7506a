"""`log.verify_stored`: the verifier's own checks on the broker's store, without HTTP."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from sqlalchemy import update

from broker import db
from broker.audit import log, verify
from broker.audit.models import LogLeaf, LogNode
from broker.auth.service import Caller, Role
from tests.audit.conftest import execute, record, sequence_all


def _caller(role: Role, **binding: Any) -> Caller:
    return Caller(principal_id=uuid.uuid4(), name=f"test-{role.value}", role=role, **binding)


def _verify(**options: Any) -> verify.Report:
    return db.call(log.verify_stored, **options)


@pytest.fixture
def sequenced(clean_db: str) -> None:
    record(40)
    sequence_all()


def test_a_sound_log_verifies_fully_and_extends_an_earlier_checkpoint(sequenced: None) -> None:
    earlier = db.call(log.latest)
    record(5)
    sequence_all()
    report = _verify(full=True, index=7, previous=earlier.note)
    text = str(report)
    assert "signature OK" in text
    assert f"consistent with the stored checkpoint size {earlier.size}" in text
    assert f"full: {report.size} leaves reproduce the root" in text
    assert "leaf 7 is included" in text
    assert report.size == 45


@pytest.mark.parametrize(
    ("tamper", "code", "message"),
    [
        (
            update(LogLeaf).where(LogLeaf.index == 1).values(leaf_bytes=b"{}"),
            "leaves",
            "leaf 1: stored hash differs from its bytes",
        ),
        (
            update(LogNode).where(LogNode.level == 1, LogNode.index == 2).values(hash=b"\x11" * 32),
            "nodes",
            "stored node (1, 2) differs",
        ),
    ],
)
def test_tampering_is_reported_with_its_code(
    sequenced: None, tamper: Any, code: str, message: str
) -> None:
    execute(tamper)
    with pytest.raises(verify.VerifyError, match=re.escape(message)) as err:
        _verify(full=True)
    assert err.value.code == code


def test_leaves_are_read_as_the_caller_may(sequenced: None) -> None:
    everyone = _caller(Role.auditor, audit_agencies=None)
    assert _verify(caller=everyone, full=True).leaves_checked == 40
    bound = _caller(Role.auditor, audit_agencies=frozenset({"HK-CED"}))
    with pytest.raises(verify.VerifyError) as err:
        _verify(caller=bound, full=True)
    assert err.value.code == "leaves"
    assert "oversees every agency" in str(err.value)
    assert _verify(caller=bound).relation == "first"
    # A caller who may read no leaf still proves inclusion from the proof alone.
    admin = _caller(Role.admin)
    assert _verify(caller=admin, index=3).included == [3]
    with pytest.raises(verify.VerifyError) as err:
        _verify(caller=admin, full=True)
    assert (err.value.code, "auth.forbidden" in str(err.value)) == ("http", True)


def test_no_checkpoint_and_a_bad_earlier_one(clean_db: str) -> None:
    with pytest.raises(verify.VerifyError) as err:
        _verify()
    assert (err.value.code, "log.no_checkpoint" in str(err.value)) == ("http", True)
    record(3)
    sequence_all()
    with pytest.raises(verify.VerifyError) as err:
        _verify(previous="not a checkpoint")
    assert err.value.code == "state"
