"""Retention under the agreement, and the legal holds that suspend it.

The lifecycle job purges, in batches of one transaction each, the messages whose agreement's
retention (its current version's `retention`, an ISO 8601 duration counted in calendar years
and months) has passed since the broker accepted them: the envelope is emptied and the
recipients' acknowledgements dropped, together or not at all. The rows stay as the replay
guard and the log's reference, and the log keeps every leaf (hashes and metadata only), so
every earlier checkpoint and proof still verifies; each batch adds one `msg.purged` leaf
listing what went. A legal hold, placed by an auditor or an administrator with a reason and a
legal reference, keeps its message until lifted; placing and lifting are on the log, with the
texts' hashes (free text stays off the permanent log).
"""

from __future__ import annotations

import contextlib
import functools
import re
import uuid
from datetime import MINYEAR, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from broker import db, faults
from broker.agreements import repository as agreements
from broker.audit import service as audit
from broker.audit.auditor import NotOverseen
from broker.auth.service import Caller, Role
from broker.crypto.keys import sha256_b64u
from broker.errors import BrokerError, NotFound
from broker.ids import utcnow
from broker.lifecycle import repository
from broker.lifecycle.models import LegalHold
from broker.lifecycle.schemas import HoldIn, HoldOut
from broker.messages.models import Message
from broker.messages.service import Purged

# Messages per batch: one transaction, one `msg.purged` leaf listing each (sender, mid).
PURGE_BATCH = 50
# A purge is never urgent: after each batch it rests as long as the batch took, so that at most
# half of one core goes to it and the submits beside it keep their latency (bench/purge_bench.py).
PURGE_REST = 3.0
_DURATION = re.compile(
    r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?"
)


class HoldLifted(BrokerError, code="hold.lifted"): ...


def retention_start(now: datetime, retention: str | None) -> datetime | None:
    """The acceptance time before which a message's retention has passed at `now`: `now`
    less the duration, years and months by the calendar (29 February less a year is the
    28th). None for no or an unreadable retention: nothing is purged on a guess."""
    m = _DURATION.fullmatch(retention or "")
    if m is None or not retention or retention in ("P", "PT"):
        return None
    years, months, weeks, days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    year, month = divmod(now.year * 12 + (now.month - 1) - years * 12 - months, 12)
    if year < MINYEAR:
        return None  # longer than the calendar: nothing accepted can be that old
    # The same day of the month, or that month's last (28 to 31) when it has no such day.
    for day in range(now.day, 27, -1) if now.day > 28 else (now.day,):
        with contextlib.suppress(ValueError):
            moved = now.replace(year=year, month=month + 1, day=day)
            break
    try:
        return moved - timedelta(
            weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds
        )
    except OverflowError:
        return None


# Where a run of batches has got to in each agreement: (received_at, id) of the last taken.
Resume = dict[str, tuple[datetime, uuid.UUID]]


async def purge(
    session: AsyncSession,
    *,
    now: datetime | None = None,
    batch: int = PURGE_BATCH,
    resume: Resume | None = None,
) -> int:
    """Purge up to `batch` messages past their agreement's retention, in this transaction;
    returns how many. Held messages and those of agreements without a retention are kept.
    `resume`: the run's position per agreement, read and moved on (`purge_all`); a message
    skipped there (held, or locked by another purge) is seen again by the next run."""
    now = now or utcnow()
    done = 0
    for version in await agreements.current_versions(session):
        retention = version.document.get("retention")
        before = retention_start(now, retention)
        if before is None or done >= batch:
            continue
        after = None if resume is None else resume.get(version.agreement_id)
        rows = await repository.due_for_purge(
            session, version.agreement_id, before, batch - done, after
        )
        if not rows:
            continue
        if resume is not None:
            resume[version.agreement_id] = (rows[-1].received_at, rows[-1].id)
        await repository.purge(session, [r.id for r in rows], now)
        faults.crash_point("lifecycle.purge_mid_batch")  # emptied, not committed
        named = {r.sender for r in rows}
        for r in rows:
            named.update(r.routing.get("recipients", []))
        await audit.record(
            session,
            "msg.purged",
            actor="broker:lifecycle",
            subject=version.agreement_id,
            details={
                "agreement": version.agreement_id,
                "retention": retention,
                "count": len(rows),
                "messages": [{"sender": r.sender, "mid": str(r.mid)} for r in rows],
                # Every agency the purged messages named, so that each sees the leaf.
                "recipients": sorted(named),
            },
        )
        done += len(rows)
    return done


async def purge_all(session_factory: db.SessionFactory) -> int:
    """Batches of `purge`, each its own transaction, until one is not full."""
    step = functools.partial(purge, batch=PURGE_BATCH, resume={})
    total = await db.until_short(session_factory, step, PURGE_BATCH, rest=PURGE_REST)
    if total:
        await db.sqlite_truncate_wal()  # the purged envelopes' old pages in SQLite's log
    return total


def _may_hold(caller: Caller, message: Message) -> None:
    """An administrator any message; an auditor one naming an agency it oversees."""
    if caller.role is Role.admin:
        return
    named = {message.sender, *message.routing.get("recipients", [])}
    if not any(caller.oversees(agency) for agency in named):
        raise NotOverseen(f"you oversee none of {', '.join(sorted(named))}")


def _out(hold: LegalHold, message: Message) -> HoldOut:
    return HoldOut(
        id=hold.id,
        sender=message.sender,
        mid=message.mid,
        reason=hold.reason,
        reference=hold.reference,
        placed_by=hold.placed_by,
        placed_at=hold.placed_at,
        lifted_by=hold.lifted_by,
        lifted_at=hold.lifted_at,
        lift_reason=hold.lift_reason,
        active=hold.lifted_at is None,
    )


async def place_hold(session: AsyncSession, caller: Caller, data: HoldIn) -> HoldOut:
    """Keep the message past its retention until the hold is lifted (logged)."""
    message = await repository.message(session, data.sender, data.mid)
    if message is None:
        raise NotFound(f"no message {data.sender}/{data.mid}")
    _may_hold(caller, message)
    if message.purged_at is not None:
        raise Purged(f"message {data.sender}/{data.mid} was purged: there is nothing to hold")
    hold = await repository.add_hold(
        session,
        LegalHold(
            message_id=message.id,
            reason=data.reason,
            reference=data.reference,
            placed_by=caller.actor,
            placed_at=utcnow(),
        ),
    )
    await _record(
        session,
        "hold.placed",
        caller,
        hold,
        message,
        reason_sha256=sha256_b64u(data.reason.encode()),
        reference_sha256=sha256_b64u(data.reference.encode()),
    )
    return _out(hold, message)


async def lift_hold(
    session: AsyncSession, caller: Caller, hold_id: uuid.UUID, reason: str
) -> HoldOut:
    """End a hold: its message is purged at the next run if its retention has passed."""
    found = await repository.hold(session, hold_id)
    if found is None:
        raise NotFound(f"no hold {hold_id}")
    hold, message = found
    _may_hold(caller, message)
    if hold.lifted_at is not None:
        raise HoldLifted(f"hold {hold_id} was lifted at {hold.lifted_at.isoformat()}")
    hold.lifted_at, hold.lifted_by, hold.lift_reason = utcnow(), caller.actor, reason
    await _record(
        session, "hold.lifted", caller, hold, message, reason_sha256=sha256_b64u(reason.encode())
    )
    return _out(hold, message)


async def _record(
    session: AsyncSession,
    kind: str,
    caller: Caller,
    hold: LegalHold,
    message: Message,
    **hashes: str,
) -> None:
    """A hold's event: its id, its message, and the hashes of its texts (never the texts)."""
    await audit.record(
        session,
        kind,
        actor=caller.actor,
        subject=message.sender,
        details={"hold": str(hold.id), "sender": message.sender, "mid": str(message.mid), **hashes},
    )


async def holds(session: AsyncSession, caller: Caller, *, active: bool) -> list[HoldOut]:
    """The holds the caller may see (an auditor: on messages naming an agency it oversees)."""
    seen = []
    for hold, message in await repository.holds(session, active=active):
        try:
            _may_hold(caller, message)
        except NotOverseen:
            continue
        seen.append(_out(hold, message))
    return seen
