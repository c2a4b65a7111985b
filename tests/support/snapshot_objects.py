"""Damage a snapshot in the bucket, as a failing disk or a careless operator would, for tests.

The Cloud Storage emulator is Google's API, not a fake of ours, so there is no control endpoint to add:
the official client already overwrites and deletes objects, which is exactly what damage looks like to
the instance that restores. (The providers' fakes keep their own ``/_control`` APIs for what only they
can do: outbid, preempt, faults.)
"""

from __future__ import annotations

import os

from spotleash.adapters.storage import Storage
from spotleash.wire.snapshot import MANIFEST_OBJECT, object_prefix, part_object


def part_name(lease_id: str, snapshot_id: str, index: int = 0) -> str:
    return object_prefix(lease_id, snapshot_id) + part_object(index)


def manifest_name(lease_id: str, snapshot_id: str) -> str:
    return object_prefix(lease_id, snapshot_id) + MANIFEST_OBJECT


def corrupt(storage: Storage, name: str) -> None:
    """Same size, other bytes: only a hash check can tell."""
    info = storage.stat(name)
    if info is None:
        raise FileNotFoundError(f"gs://{storage.bucket.name}/{name} does not exist")
    storage.bucket.blob(name).upload_from_string(os.urandom(info.size))


def delete(storage: Storage, name: str) -> None:
    if not storage.delete_if_present(name):
        raise FileNotFoundError(f"gs://{storage.bucket.name}/{name} does not exist")
