"""The ``spotleash publish`` command (registered by ``cli/app.py``)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from spotleash.cli._common import console, settings
from spotleash.errors import ConfigError


@contextmanager
def _rich_progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def publish_command(
    app_dir: Path | None = typer.Option(None, "--app", help="the app directory (its spotleash.toml); "
                                        "default: the spotleash.toml found from here upward"),
    channel: str | None = typer.Option(None, "--channel", help="pointer to move: latest-<channel>.txt "
                                       "(default: SPOTLEASH_PACKAGE_CHANNEL)"),
    json_out: bool = typer.Option(False, "--json", help="print the result as JSON"),
    gc: bool = typer.Option(False, "--gc", help="then delete manifests no pointer names (past the newest "
                            "--keep and a day) and blobs no kept manifest names"),
    keep: int = typer.Option(5, "--keep", min=0, help="with --gc: the newest manifests kept whatever names them"),
    gc_dry_run: bool = typer.Option(False, "--gc-dry-run", help="with --gc: say what would go, delete nothing"),
) -> None:
    """Package the app as content-addressed blobs (app tree, wheels, uv), upload those the bucket lacks, write the
    manifest, move the channel pointer."""
    from spotleash.adapters.storage import Storage
    from spotleash.config import CONFIG_FILE_VAR
    from spotleash.packaging.appspec import load_app
    from spotleash.packaging.publish import ProgressFactory, _no_progress, publish

    s = settings()
    if not s.package_bucket:
        raise ConfigError("SPOTLEASH_PACKAGE_BUCKET is not set: name the package bucket "
                          "(Terraform's output; the local stack sets it)")
    app = load_app(app_dir, os.environ.get(CONFIG_FILE_VAR))
    store = Storage(s.package_bucket, project=s.project)
    progress: ProgressFactory = _rich_progress if sys.stderr.isatty() and not json_out else _no_progress
    if not json_out:
        console.print(f"packaging {app.spec.name} from {app.root} ...")
    result = publish(app, store, channel or s.package_channel, s.state_dir, progress)
    swept = None
    if gc:
        from spotleash.packaging.package_gc import collect_garbage

        swept = collect_garbage(store, keep_recent=keep, dry_run=gc_dry_run)
    if json_out:
        print(json.dumps({**result.as_json(), **({"gc": swept.as_json()} if swept else {})}))
        return
    sent = (f"{result.blobs_uploaded} blobs uploaded ({result.uploaded_bytes / 1e6:.2f} MB), "
            f"{result.blobs_reused} already in the bucket")
    console.print(f"[green]published[/] {app.spec.name}: {result.uri} ({result.size_bytes / 1e6:.1f} MB in blobs, "
                  f"{result.files} files, {result.wheels} wheels; {sent}) in {result.timings_s['total']:.1f}s")
    console.print(f"{result.pointer} → {result.sha256}" + (f" (was {result.previous})" if result.previous and
                                                           result.previous != result.sha256 else ""))
    if swept:
        console.print(f"gc{' (dry run)' if swept.dry_run else ''}: {swept.manifests_deleted} manifests and "
                      f"{swept.blobs_deleted} blobs {'would go' if swept.dry_run else 'deleted'} "
                      f"({swept.bytes_freed / 1e6:.1f} MB), {swept.manifests_kept} manifests kept")

