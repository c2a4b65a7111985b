"""``spotleash down``: publish a release per lease, then wait until the providers confirm every instance gone.

Gone means: no live record of those leases in Firestore, and no provider listing an instance carrying one
of their lease labels (a listing that fails is not "gone": it keeps the wait going). Past ``timeout_s``
what is left is reported and the exit code is ``ExitCode.LEFT_RUNNING`` (3).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from spotleash.decide.inventory import Left, Listings, left_of_leases
from spotleash.errors import ExitCode
from spotleash.polling import WaitTimeout, wait_until

if TYPE_CHECKING:
    from spotleash.adapters.firestore import FirestoreStore
    from spotleash.config import Settings

GONE_POLL_S = 1.0


@dataclass
class DownResult:
    leases: list[str]
    timeout_s: float
    waited_s: float = 0.0
    gone: list[str] = field(default_factory=list)  # instance ids confirmed gone during the wait
    left: list[Left] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return ExitCode.OK if not self.left else ExitCode.LEFT_RUNNING

    def as_json(self) -> dict[str, Any]:
        return {"ok": not self.left, "leases": self.leases, "gone": self.gone,
                "left": [x.as_json() for x in self.left], "waited_s": round(self.waited_s, 1),
                "timeout_s": self.timeout_s}


def wait_gone(lease_ids: list[str], look: Callable[[], list[Left]], *, timeout_s: float, progress: Progress,
              before: Sequence[Left] = (), poll_s: float = GONE_POLL_S) -> DownResult:
    """Poll ``look`` until it finds nothing left of the leases or ``timeout_s`` passes. ``before``: what the
    leases had before their release (what ``gone`` counts, with whatever a look saw after)."""
    started = time.monotonic()
    result = DownResult(leases=lease_ids, timeout_s=timeout_s)
    seen: set[str] = {x.instance_id for x in before if x.instance_id}
    task = progress.add_task("asking Firestore and the providers", total=None)
    last: list[Left] = []

    def check() -> bool:
        nonlocal last
        last = look()
        seen.update(x.instance_id for x in last if x.instance_id)
        still = {x.instance_id for x in last if x.instance_id}
        what = ", ".join(sorted(x.instance_id or x.provider for x in last))
        progress.update(task, total=max(len(seen), 1), completed=len(seen - still),
                        description=f"waiting for {len(last)} to be confirmed gone: {what[:80]}" if last
                        else "all confirmed gone")
        return not last

    try:
        wait_until(check, timeout_s=timeout_s, interval_s=poll_s, what="the providers to confirm the deletions")
    except WaitTimeout:
        pass
    result.left = last
    result.gone = sorted(seen - {x.instance_id for x in last if x.instance_id})
    result.waited_s = time.monotonic() - started
    return result


def down_command(settings: Settings, store: FirestoreStore, lease_ids: list[str], *, timeout_s: float,
                 json_out: bool, publish: Callable[[str], None]) -> int:
    """Release ``lease_ids`` and wait for the providers; human text on stderr when ``json_out``."""
    human = Console(stderr=json_out)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Listings(settings) as listings, Progress(*columns, console=human, transient=True) as progress:
        def look() -> list[Left]:
            live = [r for lid in lease_ids for r in store.instances_of_lease(lid)]
            return left_of_leases(live, listings(), lease_ids)

        before = look()  # what the release is for: a deletion faster than the first poll still counts as gone
        for lid in lease_ids:
            publish(lid)
            progress.console.print(f"release published for lease {lid}")
        result = wait_gone(lease_ids, look, timeout_s=timeout_s, progress=progress, before=before)
    if json_out:
        print(json.dumps(result.as_json()))
    if result.left:
        human.print(f"[bold red]left after {timeout_s:.0f}s:[/]")
        for x in result.left:
            human.print(f"  {x.provider} {x.instance_id or ''} {x.provider_id or ''}: {x.why}", soft_wrap=True)
    else:
        human.print(f"[green]confirmed gone[/] ({len(result.gone)} instance(s)) in {result.waited_s:.1f}s")
    return result.exit_code
