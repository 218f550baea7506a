"""Recall fixtures: the HTTP exchange (tests/messages) and the service-level keys (tests/inbox)."""

from tests.inbox.conftest import keys as keys
from tests.messages.conftest import exchange as exchange
