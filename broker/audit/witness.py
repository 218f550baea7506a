"""Witnesses: partner agencies that cosign the log's checkpoints (C2SP tlog-cosignature).

An administrator registers a witness (its cosigner verifier key and the agency that runs it).
The witness follows the checkpoints with its own copy of the log key, checks each new one's
consistency with the last it cosigned, and sends the checkpoint back with its cosignature line
(`broker witness run`). The broker accepts a line only from an active witness of the caller's
agency, on the exact text it signed for that size, with a valid signature and a time at most
five minutes ahead of its clock; it keeps the newest line per checkpoint and witness, and serves
the lines with the checkpoint. Auditors then ask for the latest checkpoint carrying K
cosignatures and verify them with the witness keys they pinned (`broker audit verify
--witnesses K`): a broker that shows two witnesses different trees cannot collect their
cosignatures on both without one of them noticing.

The first line of a witness for a checkpoint is a `log.cosigned` event (metadata: witness,
size, time); a retry, or a newer time for the same checkpoint, records nothing more.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from broker.agencies import repository as agencies
from broker.audit import log, repository
from broker.audit import service as audit
from broker.audit.models import Checkpoint, Witness
from broker.audit.schemas import CosignatureOut, CosignaturesOut, WitnessIn
from broker.auth.service import Caller
from broker.crypto import note
from broker.errors import BrokerError, DuplicateId, FieldProblem, NotFound, UnknownAgency
from broker.ids import utcnow

MAX_FUTURE_S = 300  # a cosignature's time may run this far ahead of the broker's clock
MAX_NAME = 120  # log_witnesses.name


class WitnessKeyInvalid(BrokerError, code="log.witness_key_invalid"): ...


class WitnessUnknown(BrokerError, code="log.witness_unknown"): ...


class CheckpointUnknown(BrokerError, code="log.checkpoint_unknown"): ...


class CheckpointMismatch(BrokerError, code="log.checkpoint_mismatch"): ...


class CosignatureInvalid(BrokerError, code="log.cosignature_invalid"): ...


class CosignatureFuture(BrokerError, code="log.cosignature_future"): ...


class NotCosigned(BrokerError, code="log.not_cosigned"): ...


# --- registration (administrators) ---------------------------------------------------------


async def register(session: AsyncSession, data: WitnessIn, *, actor: str) -> Witness:
    """Register a witness run by an agency; its name is the key name in its vkey."""
    try:
        key = note.parse_cosigner_vkey(data.vkey.strip())
    except note.NoteError as exc:
        raise WitnessKeyInvalid(
            f"not a cosignature/v1 verifier key ({exc})",
            errors=[FieldProblem(pointer="/vkey", detail=str(exc))],
        ) from None
    if len(key.name) > MAX_NAME:
        raise WitnessKeyInvalid(
            f"the witness name is longer than {MAX_NAME} characters",
            errors=[FieldProblem(pointer="/vkey", detail="name too long")],
        )
    if await agencies.agency(session, data.agency) is None:
        raise UnknownAgency(f"no agency {data.agency!r}")
    vkey = note.format_cosigner_vkey(key.name, key.public_key)
    if await repository.witness(session, key.name) is not None:
        raise DuplicateId(f"a witness named {key.name!r} is already registered")
    if await repository.witness_by_vkey(session, vkey) is not None:
        raise DuplicateId("this key is already registered")
    row = Witness(
        name=key.name, vkey=vkey, agency_id=data.agency, status="active", created_at=utcnow()
    )
    await repository.add_witness(session, row)
    await audit.record(
        session,
        "admin.changed",
        actor=actor,
        subject=data.agency,
        details={
            "action": "witness.registered",
            "agency": data.agency,
            "witness": key.name,
            "key_id": key.key_id.hex(),
        },
    )
    return row


async def retire(session: AsyncSession, name: str, *, actor: str) -> Witness:
    """Stop accepting a witness's cosignatures; those it sent stay served."""
    row = await repository.witness(session, name)
    if row is None:
        raise NotFound(f"no witness {name!r}")
    if row.status != "retired":
        row.status = "retired"
        await session.flush()
        await audit.record(
            session,
            "admin.changed",
            actor=actor,
            subject=row.agency_id,
            details={"action": "witness.retired", "agency": row.agency_id, "witness": name},
        )
    return row


async def list_witnesses(session: AsyncSession) -> Sequence[Witness]:
    """Every registered witness, by name."""
    return await repository.witnesses(session)


# --- cosignatures (witnesses' agencies) ----------------------------------------------------


def _text(note_text: str) -> tuple[str, note.Checkpoint]:
    try:
        text, _ = note.signature_lines(note_text)
        return text, note.Checkpoint.parse(text)
    except note.NoteError as exc:
        raise CheckpointMismatch(f"not a signed checkpoint note ({exc})") from None


async def submit(session: AsyncSession, caller: Caller, note_text: str) -> CosignaturesOut:
    """Store the cosignatures of the caller's agency's active witnesses on a stored checkpoint.

    Idempotent: a line already stored answers as stored; a newer time replaces an older one.
    """
    text, checkpoint = _text(note_text)
    stored = await repository.checkpoint(session, checkpoint.size)
    if stored is None:
        raise CheckpointUnknown(f"the log signed no checkpoint of size {checkpoint.size}")
    if text != _signed_text(stored):
        raise CheckpointMismatch(
            f"this is not the checkpoint the log signed for size {checkpoint.size}: "
            "cosign the note exactly as GET /v1/log/checkpoint served it"
        )
    mine = [
        w for w in await repository.witnesses(session, caller.agency_id) if w.status == "active"
    ]
    found: list[tuple[Witness, int, str]] = []
    for witness in mine:
        verifier = note.parse_cosigner_vkey(witness.vkey)
        try:
            timestamp = note.verify_cosignature(note_text, verifier)
        except note.NoteError as exc:
            if exc.code == "unverified":
                continue
            raise CosignatureInvalid(f"the cosignature by {witness.name} fails: {exc}") from None
        found.append((witness, timestamp, _line_of(note_text, verifier, timestamp)))
    if not found:
        raise WitnessUnknown(
            f"the note carries no cosignature by an active witness of {caller.agency_id}: "
            "have an administrator register the witness's key (`broker admin witness register`)"
        )
    now = int(time.time())
    for witness, timestamp, _ in found:
        if timestamp > now + MAX_FUTURE_S:
            raise CosignatureFuture(
                f"the cosignature by {witness.name} is dated {timestamp - now} s ahead of the "
                "broker's clock: check the witness host's clock"
            )
    results = []
    for witness, timestamp, line in found:
        before = await repository.cosignature(session, checkpoint.size, witness.name)
        changed = await repository.put_cosignature(
            session, checkpoint.size, witness.name, timestamp, line, utcnow()
        )
        # A leaf per checkpoint and witness: a newer time for the same one replaces the
        # served line (which verifies on its own) without growing the log again.
        if changed and before is None:
            await audit.record(
                session,
                "log.cosigned",
                actor=caller.actor,
                subject=witness.agency_id,
                details={
                    "agency": witness.agency_id,
                    "witness": witness.name,
                    "size": checkpoint.size,
                    "cosigned_at": timestamp,
                },
            )
        row = await repository.cosignature(session, checkpoint.size, witness.name)
        results.append(CosignatureOut.model_validate(row))
    return CosignaturesOut(cosignatures=results)


def _signed_text(row: Checkpoint) -> str:
    return row.note[: row.note.find("\n\n") + 1]


def _line_of(note_text: str, verifier: note.CosignerVerifier, timestamp: int) -> str:
    """The witness's verified line with this timestamp (the note may carry older ones too)."""
    prefix = verifier.key_id + timestamp.to_bytes(8, "big")
    _, lines = note.signature_lines(note_text)
    for line in lines:
        name, _, b64 = line.removeprefix(note.SIG_PREFIX).partition(" ")
        if name == verifier.name and base64.b64decode(b64).startswith(prefix):
            return line
    raise CosignatureInvalid("the verified cosignature line is gone")  # unreachable


# --- serving -------------------------------------------------------------------------------


async def cosigned_note(session: AsyncSession, row: Checkpoint) -> str:
    """The stored checkpoint note with every stored cosignature line appended."""
    lines = [c.line for c in await repository.cosignatures(session, row.size)]
    return note.add_signatures(row.note, lines) if lines else row.note


async def checkpoint_note(
    session: AsyncSession, *, size: int | None = None, cosigned: int | None = None
) -> str:
    """The latest checkpoint, the one of `size`, or the latest with `cosigned` cosignatures."""
    if size is not None:
        row = await repository.checkpoint(session, size)
        if row is None:
            raise CheckpointUnknown(f"the log signed no checkpoint of size {size}")
    elif cosigned:
        found = await repository.latest_cosigned_size(session, cosigned)
        row = None if found is None else await repository.checkpoint(session, found)
        if row is None:
            raise NotCosigned(
                f"no checkpoint carries {cosigned} cosignatures yet: retry after the witnesses' "
                "next run, or ask for fewer"
            )
    else:
        row = await log.latest(session)
    return await cosigned_note(session, row)
