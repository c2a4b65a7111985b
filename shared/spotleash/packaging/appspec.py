"""``spotleash.toml``: one file for the settings (top-level keys) and the app spec (``[app]``).

    # settings, same names as the SPOTLEASH_* variables, lower case
    project = "my-project"
    package_bucket = "my-project-spotleash-packages"

    [app]
    name = "thumbs"
    dir = "."                       # the app tree, relative to this file
    requirements = ["numpy>=1.26", "Pillow>=10"]

    [[app.components]]
    name = "thumbnailer"
    command = ["python", "thumbnailer.py"]
    port = 8101
    health_path = "/healthz"
    ram_gb = 2
    local_url = "http://127.0.0.1:8101"
    route_port = 8201                # the router: the app talks to this port, spotleash picks the copy
    offload = "default"              # or "keep" (the local copy keeps running too) or "never" (stays here)

    [[app.artifacts]]                # model weights: published as blobs, not inside the app blob
    name = "minilm"                  # every component sees SPOTLEASH_ARTIFACT_MINILM = its local path
    path = "~/models/all-MiniLM-L6-v2"   # a file or directory: absolute, ~/..., or relative to this file

The file is the one ``SPOTLEASH_CONFIG_FILE`` names, else the first ``spotleash.toml`` found from the
working directory upward. The settings ``components``, ``component_ram_gb``, ``gpu_components`` and
``component_offload`` are derived from ``[app]`` unless the file sets them at top level; ``SPOTLEASH_*``
variables still win.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from spotleash.errors import ConfigError
from spotleash.wire.package import AppSpec, artifact_env_name

CONFIG_NAME = "spotleash.toml"


def find_config_file(explicit: str | None, start: Path | None = None) -> Path | None:
    """``explicit`` (the value of SPOTLEASH_CONFIG_FILE) if given, else ``spotleash.toml`` upward from ``start``."""
    if explicit:
        return Path(explicit)
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        candidate = d / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"{path} does not exist") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e


def _where(loc: tuple[int | str, ...], raw: Any) -> str:
    """``components[1] ("vectors").port`` from pydantic's ``("components", 1, "port")``."""
    out = "app"
    node = raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f' ("{node["name"]}")'
        else:
            out += f".{part}"
            node = node.get(part) if isinstance(node, dict) else None
    return out


def parse_app(raw: Any, source: Path) -> AppSpec:
    """Validate an ``[app]`` table; ``ConfigError`` naming each wrong field (``app.components[0].port``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [app] must be a table")
    try:
        return AppSpec.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = _where(tuple(err["loc"]), raw)
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"{where}: {err['msg']}{shown}")
        raise ConfigError(f"invalid [app] in {source} — fix these:\n  " + "\n  ".join(lines)) from e


def settings_values(file_values: dict[str, Any], source: Path) -> dict[str, Any]:
    """The settings keys of a ``spotleash.toml``: its top level, plus what ``[app]`` implies."""
    values = dict(file_values)
    raw_app = values.pop("app", None)
    if raw_app is None:
        return values
    app = parse_app(raw_app, source)
    values.setdefault("components", [c.name for c in app.components])
    values.setdefault("component_ram_gb", {c.name: c.ram_gb for c in app.components})
    values.setdefault("gpu_components", [c.name for c in app.components if c.gpu])
    values.setdefault("component_offload", {c.name: c.offload for c in app.components if c.offload != "default"})
    return values


def artifact_paths(spec: AppSpec, config_file: Path) -> dict[str, Path]:
    """Each ``[[app.artifacts]]`` name → its path on this machine (``~`` expanded, relative to the toml's
    directory), checked to exist: ``ConfigError`` naming every one that does not, and what to do."""
    out: dict[str, Path] = {}
    wrong: list[str] = []
    for a in spec.artifacts:
        path = (config_file.parent / Path(a.path).expanduser()).resolve()
        if path.is_file() or path.is_dir():
            out[a.name] = path
        else:
            wrong.append(f'app.artifacts ("{a.name}").path: {path} '
                         f'{"is neither a file nor a directory" if path.exists() else "does not exist"}')
    if wrong:
        raise ConfigError(f"invalid [[app.artifacts]] in {config_file} — fix these (put the files there, or point "
                          "path at where they are):\n  " + "\n  ".join(wrong))
    return out


@dataclass(frozen=True)
class LoadedApp:
    spec: AppSpec
    config_file: Path
    root: Path  # the app tree: config_file's directory / spec.dir
    artifacts: Mapping[str, Path] = field(default_factory=dict)  # artifact name → its path here (checked)

    def artifact_env(self) -> dict[str, str]:
        """``SPOTLEASH_ARTIFACT_<NAME>`` → the user's own path: what a local copy sees (an instance: the fetched copy)."""
        return {artifact_env_name(n): str(p) for n, p in self.artifacts.items()}


def load_app(app_dir: Path | None, explicit: str | None) -> LoadedApp:
    """The app to publish: ``app_dir``'s ``spotleash.toml`` (searched upward from it), else the settings file."""
    path = find_config_file(None, app_dir) if app_dir is not None else find_config_file(explicit)
    if path is None:
        where = app_dir if app_dir is not None else Path.cwd()
        raise ConfigError(f"no {CONFIG_NAME} found in {where} or above (or name one with SPOTLEASH_CONFIG_FILE)")
    raw = read_toml(path)
    if "app" not in raw:
        raise ConfigError(f"{path} has no [app] table: declare the app and its [[app.components]]")
    spec = parse_app(raw["app"], path)
    root = (path.parent / spec.dir).resolve()
    if not root.is_dir():
        raise ConfigError(f"app.dir in {path}: {root} is not a directory")
    return LoadedApp(spec=spec, config_file=path.resolve(), root=root, artifacts=artifact_paths(spec, path.resolve()))
