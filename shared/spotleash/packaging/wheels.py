"""The wheels a package carries: spotleash's own (``own_wheel``) and everything the ``instance`` extra
plus the app's requirements resolve to on the instance's platform.

spotleash's core dependencies are the control plane's (Google clients, grpc, flask, functions-framework):
the instance agent imports none of them, and they were ~40 of the example's 72 wheels and half its install.
So the instance installs spotleash's wheel without its dependencies (``manifest.no_deps``) plus the
``instance`` extra's own requirements, read from the wheel's metadata (``instance_requirements``): the
extra names every package the agent imports, core ones included (tests/unit/test_packaging.py checks it).

Resolution is ``pip download --only-binary=:all:`` for linux x86_64 / CPython 3.11, so an instance
installs offline exactly these files and never asks a public index for a name. The resolved set is
cached under ``STATE_DIR/wheels/``, keyed by what determines it (spotleash's declared dependencies,
the app's requirements, the platform): a re-publish of the same app resolves nothing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from spotleash.errors import BadInput, Transient
from spotleash.wire.package import PLATFORM, PYTHON_VERSION, requirement_name

INSTANCE_EXTRA = "instance"
PIP_TIMEOUT_S = 900


class WheelError(BadInput):
    """Requirements that cannot be resolved to wheels for the instance's platform, or spotleash's own wheel
    cannot be built."""


class WheelTransient(Transient):
    """The package index could not be reached."""


def run_tool(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, cwd=cwd, check=False)
    except subprocess.TimeoutExpired as e:
        raise WheelTransient(f"{what} took longer than {PIP_TIMEOUT_S}s") from e
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        if any(s in tail for s in ("Could not fetch URL", "NewConnectionError", "Temporary failure in name",
                                   "Max retries exceeded", "ConnectTimeout", "Read timed out")):
            raise WheelTransient(f"{what}: the package index is unreachable:\n{tail}")
        raise WheelError(f"{what} failed:\n{tail}")
    return done.stdout


def _requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(meta).decode())
    return sorted(msg.get_all("Requires-Dist") or [])


def platform_tags() -> list[str]:
    """Every manylinux tag the instance accepts, newest first: pip does not expand ``manylinux_2_28`` to the
    older glibc tags by itself (a wheel tagged only ``manylinux2014_x86_64`` would not be found)."""
    arch = PLATFORM.rsplit("_", 2)[-2] + "_" + PLATFORM.rsplit("_", 1)[-1]  # x86_64
    newest = int(PLATFORM.split("_")[2])
    tags = [f"manylinux_2_{m}_{arch}" for m in range(newest, 4, -1)]
    return [*tags, f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


def _version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def own_requirement(spotleash_wheel: Path) -> str:
    """spotleash itself, pinned: installed without its dependencies (the core is the control plane's)."""
    return f"spotleash=={_version(spotleash_wheel)}"


_EXTRA_CLAUSE = re.compile(r"""^\s*(?:\((.*)\)\s+and\s+)?extra\s*==\s*['"]([^'"]+)['"]\s*$""")


def extra_requirements(requires_dist: list[str], extra: str) -> list[str]:
    """The ``Requires-Dist`` lines that ``extra`` adds, without the ``extra == …`` clause (the rest of a marker,
    ``uvloop>=0.21; sys_platform != 'win32'``, stays for the instance's installer to evaluate). Markers as
    hatchling writes them: ``extra == 'x'`` or ``(<marker>) and extra == 'x'``; a line naming ``extra`` in any
    other shape is refused rather than guessed at."""
    out = []
    for line in requires_dist:
        req, _, marker = line.partition(";")
        if extra not in marker:
            continue
        m = _EXTRA_CLAUSE.match(marker)
        if not m:
            raise WheelError(f"spotleash's metadata names the {extra!r} extra in an unexpected marker: {line!r}")
        if m.group(2) == extra:
            out.append(f"{req.strip()}; {m.group(1)}" if m.group(1) else req.strip())
    return sorted(set(out))


def instance_requirements(spotleash_wheel: Path) -> list[str]:
    """What the ``instance`` extra of this wheel requires: with spotleash installed ``--no-deps``, all the
    instance agent gets."""
    reqs = extra_requirements(_requires_dist(spotleash_wheel), INSTANCE_EXTRA)
    if not reqs:
        raise WheelError(f"{spotleash_wheel.name} declares no {INSTANCE_EXTRA!r} extra")
    return reqs


def without_provided(requirements: list[str], image_provides: list[str]) -> list[str]:
    """``requirements`` minus those naming a distribution the image provides (``[app] image_provides``)."""
    provided = {requirement_name(r) for r in image_provides}
    return [r for r in requirements if requirement_name(r) not in provided]


def wheel_name(wheel: Path) -> str:
    """The normalised distribution name of a wheel file (``Torch_X-2.4.0-….whl`` → ``torch-x``)."""
    return requirement_name(wheel.name.split("-")[0])


def resolve(spotleash_wheel: Path, requirements: list[str], cache_dir: Path,
            image_provides: list[str] | None = None) -> list[Path]:
    """Every wheel the instance installs: spotleash's own plus what its ``instance`` extra and ``requirements``
    resolve to (not its core: ``instance_requirements``), minus the
    wheels of distributions the image provides (``image_provides``: neither asked for nor shipped; pip still
    downloads one another requirement depends on, once, into the cache, and it is left out of the package)."""
    provided = {requirement_name(r) for r in image_provides or []}
    requirements = without_provided(requirements, image_provides or [])
    instance = without_provided(instance_requirements(spotleash_wheel), image_provides or [])
    # "core": False: sets resolved before the instance left spotleash's core out held it, and must not be reused
    key_src = json.dumps({"requires": _requires_dist(spotleash_wheel), "extra": INSTANCE_EXTRA, "core": False,
                          "version": _version(spotleash_wheel), "app": sorted(requirements),
                          "platform": PLATFORM, "python": PYTHON_VERSION}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    files_dir = cache_dir / "files"
    index = cache_dir / f"resolved-{key}.json"
    if index.is_file():
        names = json.loads(index.read_text())
        cached = [files_dir / n for n in names]
        if all(p.is_file() for p in cached):
            return [spotleash_wheel, *(p for p in cached if wheel_name(p) not in provided)]
    files_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        argv = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", *(a for p in platform_tags() for a in ("--platform", p)),
            "--python-version", PYTHON_VERSION,
            "--implementation", "cp", "--abi", "cp" + PYTHON_VERSION.replace(".", ""),
            "--cache-dir", str(cache_dir / "pip-cache"), "-d", tmp,
            *instance, *requirements,
        ]
        run_tool(argv, f"resolving wheels for {PLATFORM} / CPython {PYTHON_VERSION} ({', '.join(requirements) or 'no app requirements'})")
        got = sorted(p for p in Path(tmp).glob("*.whl") if not p.name.startswith("spotleash-"))
        not_wheels = sorted(p.name for p in Path(tmp).iterdir() if p.suffix != ".whl")
        if not_wheels:
            raise WheelError(f"pip produced non-wheel files {not_wheels}: the instance installs wheels only")
        for p in got:
            os.replace(p, files_dir / p.name)
    index.write_text(json.dumps([p.name for p in got]))
    return [spotleash_wheel, *(files_dir / p.name for p in got if wheel_name(p) not in provided)]


UV_VERSION = "0.13.9"  # the uv an instance installs with (its PyPI wheel carries a static binary)


def uv_wheel(cache_dir: Path) -> Path:
    """uv's own wheel for the instance's platform, downloaded once into ``cache_dir/tools``."""
    tools = cache_dir / "tools"
    found = sorted(tools.glob(f"uv-{UV_VERSION}-*.whl"))
    if found:
        return found[0]
    tools.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        run_tool([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                  "--only-binary=:all:", "--no-deps", *(a for p in platform_tags() for a in ("--platform", p)),
                  "--python-version", PYTHON_VERSION, "--implementation", "cp",
                  "--abi", "cp" + PYTHON_VERSION.replace(".", ""), "-d", tmp, f"uv=={UV_VERSION}"],
                 f"downloading uv {UV_VERSION} for {PLATFORM}")
        got = sorted(Path(tmp).glob("uv-*.whl"))
        if not got:
            raise WheelError(f"pip found no uv {UV_VERSION} wheel for {PLATFORM}")
        os.replace(got[0], tools / got[0].name)
    return tools / got[0].name
