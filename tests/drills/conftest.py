"""Fixtures for the fault drills and the invariant checker's own tests."""

from __future__ import annotations

from tests.inbox.conftest import keys as keys  # the demo world's keys, no app started
