"""The one id pattern: leases, instances, events, snapshots and deployments are all ids of this form, which
is also a valid GCE label value (so every id can label the instance it concerns)."""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import Field

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"

Id = Annotated[str, Field(pattern=ID_PATTERN)]


def new_id() -> str:
    return uuid.uuid4().hex
