"""The sequencer: every event gets one leaf, no gaps, a signed checkpoint per batch, refusal on damage."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from typing import Any

import pytest
from sqlalchemy import Text, func, select, text, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import IntegrityError

from broker import db, keyring
from broker.audit import leaf, sequencer
from broker.audit.models import AuditEvent, Checkpoint, LogLeaf, LogNode
from broker.crypto import merkle, note
from tests.audit import rfc9162
from tests.audit.conftest import execute, record, rows, scalar, scalars, sequence_all


def _checkpoints() -> list[Checkpoint]:
    return scalars(select(Checkpoint).order_by(Checkpoint.size))


def _sequence(max_batch: int = sequencer.MAX_BATCH) -> int:
    """One sequencer batch in a transaction of its own."""
    return db.call(sequencer.sequence, max_batch=max_batch)


def _verifier() -> note.NoteVerifier:
    return note.parse_verifier_key(keyring.load_or_create().log_verifier_key)


class TestSequencing:
    def test_every_registry_action_becomes_a_leaf(
        self, world: dict[str, Any], token_for: Any
    ) -> None:
        from broker.crypto.keys import SigningKey
        from broker.directory import service as directory
        from broker.directory.schemas import KeyIn

        token_for("auditor", audit_agencies=["VN-GDC"])
        key = SigningKey.generate()
        db.call(
            directory.register,
            KeyIn(agency_id="VN-GDC", focal_point_id="VN-GDC/fp-hcm-01", jwk=key.public.jwk),
            actor="test",
        )
        assert sequence_all() > 100
        events = {e.leaf_index: e for e in scalars(select(AuditEvent))}
        leaves = scalars(select(LogLeaf).order_by(LogLeaf.index))
        assert sorted(events) == list(range(len(events))) == [x.index for x in leaves]
        kinds = {e.kind for e in events.values()}
        assert {
            "agency.created",
            "focal_point.created",
            "agreement.updated",
            "designation.changed",
            "operation.updated",
            "admin.changed",
            "token.issued",
            "key.registered",
        } <= kinds
        for row in leaves:
            event = events[row.index]
            doc = json.loads(row.leaf_bytes)
            assert row.event_id == event.id
            assert row.leaf_hash == hashlib.sha256(b"\x00" + row.leaf_bytes).digest()
            assert (doc["v"], doc["kind"], doc["index"]) == (1, event.kind, row.index)
            assert (doc["actor"], doc["subject"]) == (event.actor, event.subject)
            assert doc["ts"] == sequencer.epoch_ms(event.created_at)
            assert leaf.details_of(doc) == event.details
            assert leaf.encode(doc) == row.leaf_bytes
        (head,) = _checkpoints()[-1:]
        checkpoint = note.verify_checkpoint(head.note, _verifier())
        assert checkpoint.size == len(leaves)
        assert checkpoint.root_hash == rfc9162.mth([x.leaf_hash for x in leaves])

    def test_one_signed_checkpoint_per_batch_each_extending_the_last(self, clean_db: str) -> None:
        record(25)
        assert [_sequence(10) for _ in range(4)] == [10, 10, 5, 0]
        hashes = [bytes(h) for h in scalars(select(LogLeaf.leaf_hash).order_by(LogLeaf.index))]
        heads = [note.verify_checkpoint(c.note, _verifier()) for c in _checkpoints()]
        assert [c.size for c in heads] == [10, 20, 25]
        for c in heads:
            assert c.root_hash == rfc9162.mth(hashes[: c.size])
        for old, new in itertools.pairwise(heads):
            proof = rfc9162.proof(old.size, hashes[: new.size])
            assert rfc9162.verify_consistency(
                old.size, new.size, proof, old.root_hash, new.root_hash
            )

    def test_events_are_sequenced_in_time_order(self, clean_db: str) -> None:
        for i in range(5):
            record(1, order=i)
        sequence_all()
        found = rows(select(AuditEvent.leaf_index, AuditEvent.details))
        assert sorted(found, key=lambda r: r[0]) == sorted(found, key=lambda r: r[1]["order"])

    def test_an_empty_log_has_a_signed_size_zero_checkpoint(self, clean_db: str) -> None:
        assert _sequence() == 0
        assert _sequence() == 0
        (head,) = _checkpoints()
        checkpoint = note.verify_checkpoint(head.note, _verifier())
        assert (checkpoint.size, checkpoint.root_hash) == (0, merkle.EMPTY_ROOT)
        record(3)
        sequence_all()
        assert [c.size for c in _checkpoints()] == [0, 3]

    def test_the_task_and_the_ticker_run_the_same_job(self, clean_db: str) -> None:
        from broker import jobs, ticker
        from broker.audit import jobs as audit_jobs
        from broker.queue import celery_app
        from broker.workers.tasks import audit as audit_tasks

        assert celery_app.tasks[jobs.SEQUENCE].name == audit_tasks.sequence_log.name
        beat = {e["task"]: e["schedule"] for e in celery_app.conf.beat_schedule.values()}
        assert beat[jobs.SEQUENCE] <= 1.0
        assert "broker.workers.tasks.audit" in celery_app.conf.include
        record(3)
        assert audit_tasks.sequence_log() == 3
        audit_jobs.install()
        assert ticker._jobs[jobs.SEQUENCE].fn is audit_jobs.sequence_pending


class TestRefusals:
    def test_never_two_roots_for_one_size(self, clean_db: str) -> None:
        record(4)
        sequence_all()
        with pytest.raises(IntegrityError):
            db.call(sequencer.sign, 4, b"\x07" * 32)
        assert len(_checkpoints()) == 1

    def test_refuses_to_extend_an_altered_right_edge(self, clean_db: str) -> None:
        record(6)
        sequence_all()
        level, index = merkle.root_keys(6)[0]
        execute(
            update(LogNode)
            .where(LogNode.level == level, LogNode.index == index)
            .values(hash=b"\x00" * 32)
        )
        record(2)
        with pytest.raises(sequencer.LogInconsistent, match="signed checkpoint has"):
            _sequence()
        assert [c.size for c in _checkpoints()] == [6]
        assert scalar(select(func.count()).where(AuditEvent.leaf_index.is_(None))) == 2

    def test_refuses_when_a_stored_leaf_went_missing(self, clean_db: str) -> None:
        record(5)
        sequence_all()
        execute(text('DELETE FROM log_leaves WHERE "index" = 4'))
        record(1)
        with pytest.raises(sequencer.LogInconsistent, match="4 leaves are stored"):
            _sequence()

    def test_refuses_a_checkpoint_row_that_disagrees_with_its_note(self, clean_db: str) -> None:
        record(3)
        sequence_all()
        execute(update(Checkpoint).values(root_hash=b"\x01" * 32))
        record(1)
        with pytest.raises(sequencer.LogInconsistent, match="disagrees with its signed note"):
            _sequence()


def _log_state() -> tuple[list[tuple[Any, Any]], list[int], list[int]]:
    """(event id, leaf index) of every event, the stored leaf indexes, the checkpoint sizes."""
    events = sorted((str(i), n) for i, n in rows(select(AuditEvent.id, AuditEvent.leaf_index)))
    leaves = scalars(select(LogLeaf.index).order_by(LogLeaf.index))
    sizes = scalars(select(Checkpoint.size).order_by(Checkpoint.size))
    return events, leaves, sizes


def _assert_sound_log(total: int) -> None:
    """Every event has exactly one leaf, indexes are 0..total-1, every checkpoint verifies."""
    indexes = sorted(scalars(select(AuditEvent.leaf_index)))
    stored = rows(select(LogLeaf.index, LogLeaf.leaf_bytes).order_by(LogLeaf.index))
    assert indexes == list(range(total))
    assert [i for i, _ in stored] == indexes
    hashes = [rfc9162.leaf_hash(bytes(data)) for _, data in stored]
    assert [json.loads(data)["index"] for _, data in stored] == indexes
    for c in _checkpoints():
        assert note.verify_checkpoint(c.note, _verifier()).root_hash == rfc9162.mth(
            hashes[: c.size]
        )


def _assert_indexes_kept(before: tuple[list[tuple[Any, Any]], list[int], list[int]]) -> None:
    old = {k: v for k, v in before[0] if v is not None}
    assert old
    assert {k: v for k, v in _log_state()[0] if k in old} == old  # an index never changes


class TestCrashSafety:
    """A batch is one transaction: a failure anywhere in it leaves no trace, and the retry
    assigns every event exactly one index, the earlier ones unchanged."""

    @pytest.mark.parametrize(
        "where",
        [
            "sequencer._leaves",  # after the UPDATE of the events
            "repository.insert_leaves",
            "repository.insert_nodes",
            "repository.add_checkpoint",
        ],
    )
    def test_a_failure_at_any_step_leaves_nothing_behind(
        self, clean_db: str, monkeypatch: pytest.MonkeyPatch, where: str
    ) -> None:
        from broker.audit import repository

        record(25)
        assert _sequence(10) == 10
        before = _log_state()
        owner, name = where.split(".")
        module = sequencer if owner == "sequencer" else repository
        original = getattr(module, name)

        if owner == "sequencer":  # a plain function

            def fails_after(*args: Any, **kwargs: Any) -> Any:
                original(*args, **kwargs)
                raise RuntimeError(f"crash in {where}")

        else:  # a statement: its work reaches the database, then the crash

            async def fails_after(*args: Any, **kwargs: Any) -> Any:
                await original(*args, **kwargs)
                raise RuntimeError(f"crash in {where}")

        monkeypatch.setattr(module, name, fails_after)
        with pytest.raises(RuntimeError, match="crash in"):
            _sequence(10)
        assert _log_state() == before
        monkeypatch.setattr(module, name, original)
        record(5)
        sequence_all()
        _assert_sound_log(30)
        _assert_indexes_kept(before)

    def test_an_event_that_already_has_an_index_keeps_it(
        self, clean_db: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Should an already sequenced event come back (a bug, a race), the batch is refused."""
        from broker.audit import repository

        record(3)
        sequence_all()
        before = _log_state()
        record(2)
        original = repository.unsequenced

        async def with_a_sequenced_one(session: Any, limit: int) -> Any:
            stale = await session.execute(
                select(
                    AuditEvent.id,
                    AuditEvent.kind,
                    AuditEvent.actor,
                    AuditEvent.subject,
                    sql_cast(AuditEvent.details, Text),
                    AuditEvent.created_at,
                ).where(AuditEvent.leaf_index == 1)
            )
            return [*stale.all(), *await original(session, limit)]

        monkeypatch.setattr(repository, "unsequenced", with_a_sequenced_one)
        with pytest.raises(sequencer.LogInconsistent, match="were still unsequenced"):
            _sequence()
        monkeypatch.setattr(repository, "unsequenced", original)
        assert _log_state()[1:] == before[1:]
        sequence_all()
        _assert_sound_log(5)
        _assert_indexes_kept(before)

    @pytest.mark.postgres
    def test_killed_mid_batch_a_restart_assigns_the_same_indexes_once(
        self, clean_db: str, tmp_path: Any
    ) -> None:
        """kill -9 (the `log.before_commit` crash point) after a batch is written, before commit."""
        import os
        import subprocess
        import sys

        from broker.config import settings

        cfg = settings()
        record(12)
        _sequence(5)
        before = _log_state()
        record(8)
        script = (
            "import sys\n"
            "from broker import config\n"
            "config.configure(database_url=sys.argv[1], data_dir=sys.argv[2], keys_dir=sys.argv[3],"
            " log_level='WARNING')\n"
            "from broker.audit import jobs\n"
            "jobs.sequence_pending()\n"
        )
        env = {
            **os.environ,
            "BROKER_CRASH_AT": "log.before_commit",
            "BROKER_ENVIRONMENT": "development",
            "BROKER_KEY_PASSPHRASE": cfg.key_passphrase,  # the log key's, made by this process
        }
        env.pop("BROKER_CRASH_ONCE_DIR", None)
        argv = [cfg.sqlalchemy_url, str(tmp_path), str(cfg.broker_keys_dir.resolve())]
        done = subprocess.run(
            [sys.executable, "-c", script, *argv], env=env, capture_output=True, timeout=60
        )
        assert done.returncode == 137, done.stderr.decode()
        assert b"crash point log.before_commit" in done.stderr
        events, leaves, sizes = _log_state()
        assert (leaves, sizes) == before[1:]  # no leaf, node or checkpoint survived the kill
        assert sum(i is None for _, i in events) == 15
        sequence_all()
        _assert_sound_log(20)
        _assert_indexes_kept(before)


class TestConcurrency:
    def test_two_sequencers_never_share_or_skip_an_index(self, clean_db: str) -> None:
        """Writers record while two sequencers race; the result is one gapless, consistent log."""
        stop = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for _ in range(40):
                    record(7)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def sequencer_loop() -> None:
            try:
                while not stop.is_set():
                    _sequence(13)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        writers = [threading.Thread(target=writer) for _ in range(2)]
        sequencers = [threading.Thread(target=sequencer_loop) for _ in range(2)]
        for t in writers + sequencers:
            t.start()
        for t in writers:
            t.join()
        stop.set()
        for t in sequencers:
            t.join()
        assert errors == []
        sequence_all()
        indexes = sorted(scalars(select(AuditEvent.leaf_index)))
        hashes = [bytes(h) for h in scalars(select(LogLeaf.leaf_hash).order_by(LogLeaf.index))]
        assert indexes == list(range(2 * 40 * 7))
        assert len(hashes) == len(indexes)
        heads = [note.verify_checkpoint(c.note, _verifier()) for c in _checkpoints()]
        for c in heads:
            assert c.root_hash == rfc9162.mth(hashes[: c.size])
        assert heads[-1].size == len(hashes)


def test_the_embedded_ticker_sequences_within_the_merge_delay(client: Any) -> None:
    """With the app running (lifespan ticker), a commit that records an event wakes the sequencer."""
    delays = []
    for i in range(15):
        record(1, probe=i)
        started = time.monotonic()
        while True:
            pending = scalar(select(func.count()).where(AuditEvent.leaf_index.is_(None)))
            if pending == 0:
                break
            assert time.monotonic() - started < 5, "the ticker did not sequence the event"
            time.sleep(0.01)
        delays.append(time.monotonic() - started)
    # The promise is p99 < 1 s (the bench measures it); one slow sample on a loaded CI box is ok.
    assert sorted(delays)[-2] < 1.0, delays
