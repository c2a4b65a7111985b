"""The package on the instance, once installed: its manifest as a model and the components to run.

Fetching, verifying, extracting and installing are ``bootstrap``'s (standard library only, so a fresh
box runs them on its system python3 before anything of spotleash is installed); this module holds
what the instance agent needs after that, with the package format's models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from spotleash.instance_agent.bootstrap import MANIFEST_NAME, PackageFailure, artifact_path
from spotleash.supervisor import Launch
from spotleash.wire.package import LAYERED_FORMAT, LayeredManifest, Manifest, artifact_env_name


@dataclass(frozen=True)
class Prepared:
    root: Path  # the fresh directory the archive was extracted into
    manifest: Manifest | LayeredManifest  # format 1 (one archive) or 2 (layered): the agent reads ``app``

    @property
    def app_dir(self) -> Path:
        return self.root / "app"

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    def artifact_env(self) -> dict[str, str]:
        """``SPOTLEASH_ARTIFACT_<NAME>`` → the fetched copy of each artifact (laid out by the bootstrap)."""
        if not isinstance(self.manifest, LayeredManifest) or not self.manifest.artifacts:
            return {}
        raw = self.manifest.model_dump(mode="json")
        return {artifact_env_name(n): str(artifact_path(self.root, raw, n)) for n in self.manifest.artifacts}

    @property
    def artifact_dirs(self) -> list[Path]:
        """Where the artifacts are: never packed into a snapshot (they are in the bucket already)."""
        return [self.root / "artifacts"] if isinstance(self.manifest, LayeredManifest) and self.manifest.artifacts \
            else []


def prepared(root: Path, raw: dict[str, object] | None = None) -> Prepared:
    """An extracted, installed package root (``raw``: its manifest, when already read)."""
    try:
        data = raw if raw is not None else json.loads((root / MANIFEST_NAME).read_text())
        model = LayeredManifest if isinstance(data, dict) and data.get("format") == LAYERED_FORMAT else Manifest
        return Prepared(root=root, manifest=model.model_validate(data))
    except (OSError, ValueError, ValidationError) as e:
        raise PackageFailure("package_unverified", f"{root / MANIFEST_NAME}: {e}"[:480]) from e


def launches(manifest: Manifest | LayeredManifest, wanted: list[str]) -> list[Launch]:
    """The components this instance was launched for (all of the package's when ``wanted`` is empty)."""
    known = {c.name: c for c in manifest.app.components}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise PackageFailure("component_unknown", f"the package has no component {', '.join(missing)} "
                                                  f"(it has {', '.join(sorted(known))})")
    chosen = [known[n] for n in wanted] if wanted else list(manifest.app.components)
    # A package that marks its GPU components (``gpu = true``) hides the GPUs from the others; one that marks
    # none leaves every component the box's GPUs (it may route them to a GPU box by SPOTLEASH_GPU_COMPONENTS).
    marks_gpus = any(c.gpu for c in manifest.app.components)
    return [Launch(name=c.name, argv=tuple(c.command), port=c.port, health_path=c.health_path,
                   timeout_s=c.start_timeout_s, env=dict(c.env), sees_gpus=c.gpu or not marks_gpus)
            for c in chosen]
