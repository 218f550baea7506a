"""Import every domain's models so `Base.metadata` is complete (Alembic, tests)."""

from broker.agencies.models import Agency, FocalPoint
from broker.agreements.models import (
    Agreement,
    AgreementApproval,
    AgreementProposal,
    AgreementVersion,
    Designation,
    Operation,
)
from broker.audit.models import (
    AuditEvent,
    BudgetCount,
    BudgetWindow,
    Checkpoint,
    LogLeaf,
    LogNode,
)
from broker.auth.models import Credential, Principal
from broker.console.models import ConsoleSession, VerificationRun
from broker.db import Base
from broker.directory.models import DirectoryVersion, PublicKey
from broker.lifecycle.models import LegalHold
from broker.messages.models import Delivery, InboxCounter, Message, Outbox
from broker.push.models import PushAttempt, PushEndpoint
from broker.recalls.models import Recall, RecallRecipient
from broker.registry.models import RegistryState

__all__ = [
    "Agency",
    "Agreement",
    "AgreementApproval",
    "AgreementProposal",
    "AgreementVersion",
    "AuditEvent",
    "Base",
    "BudgetCount",
    "BudgetWindow",
    "Checkpoint",
    "ConsoleSession",
    "Credential",
    "Delivery",
    "Designation",
    "DirectoryVersion",
    "FocalPoint",
    "InboxCounter",
    "LegalHold",
    "LogLeaf",
    "LogNode",
    "Message",
    "Operation",
    "Outbox",
    "Principal",
    "PublicKey",
    "PushAttempt",
    "PushEndpoint",
    "Recall",
    "RecallRecipient",
    "RegistryState",
    "VerificationRun",
]
