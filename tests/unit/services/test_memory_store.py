"""The in-memory store against the shared Store contract (the Firestore half is tests/emulator/test_firestore_store.py)."""

from __future__ import annotations

import pytest
from tests.support.memory_store import MemoryStore
from tests.support.store_contract import MakeStore, StoreContract


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def make_store(self) -> MakeStore:
        db = MemoryStore("unused")
        return db.for_deployment
