"""FirestoreStore on Google's Firestore emulator against the shared Store contract.

The same test bodies run against the in-memory store in tests/unit/services/test_memory_store.py:
what passes there and fails here is a place where the fake lies.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from tests.conftest import TEST_PROJECT
from tests.emulator.emulator_fixtures import empty_firestore, firestore_emulator
from tests.support.store_contract import DEP, MakeStore, StoreContract, record

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

        empty_firestore(firestore_host)
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
        client = firestore.Client(project=TEST_PROJECT)
        return lambda deployment_id: FirestoreStore(client, deployment_id)


def test_two_processes_updating_one_document_lose_nothing(firestore_host: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers in one store take turns; two stores, each with its own client (as a function and the reaper in
    two processes), still fight over the document's lock (the emulator aborts one of two after a ~2 s wait),
    and the contention rounds carry them through."""
    from google.cloud import firestore

    empty_firestore(firestore_host)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    stores = [FirestoreStore(firestore.Client(project=TEST_PROJECT), DEP) for _ in range(2)]
    stores[0].create_intent(record("sl-a"))
    errors: list[BaseException] = []

    def bump(store: FirestoreStore) -> None:
        for _ in range(2):
            try:
                store.update("sl-a", lambda r: r.model_copy(update={"attempts": r.attempts + 1}))
            except BaseException as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

    threads = [threading.Thread(target=bump, args=(s,)) for s in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [], [repr(e) for e in errors]
    got = stores[1].get("sl-a")
    assert got is not None and got.attempts == 8
