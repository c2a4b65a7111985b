"""FirestoreStore on Google's Firestore emulator against the shared Store contract.

The same test bodies run against the in-memory store in tests/unit/services/test_memory_store.py:
what passes there and fails here is a place where the fake lies.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tests.conftest import TEST_PROJECT
from tests.emulator.emulator_fixtures import firestore_emulator
from tests.support.store_contract import MakeStore, StoreContract

from spotleash.adapters.firestore import FirestoreStore

pytestmark = [pytest.mark.emulator]


@pytest.fixture(scope="module")
def firestore_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with firestore_emulator(tmp_path_factory.mktemp("firestore-emulator")) as host:
        yield host


class TestFirestoreStore(StoreContract):
    @pytest.fixture
    def make_store(self, firestore_host: str, monkeypatch: pytest.MonkeyPatch) -> MakeStore:
        from google.cloud import firestore

        # Each test starts from an empty database (the emulator's own reset endpoint).
        httpx.delete(f"http://{firestore_host}/emulator/v1/projects/{TEST_PROJECT}/databases/(default)/documents",
                     timeout=10).raise_for_status()
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
        client = firestore.Client(project=TEST_PROJECT)
        return lambda deployment_id: FirestoreStore(client, deployment_id)
