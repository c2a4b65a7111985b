"""The startup script: hostile values stay inert, and the script passes bash -n and shellcheck."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotleash.startup_script import VALUES_END, render_startup_script

HOSTILE = st.one_of(
    st.sampled_from([
        "$(touch pwned)", "`touch pwned`", "'; touch pwned; '", '"; touch pwned; "', "a\ntouch pwned\n",
        "${IFS}touch${IFS}pwned", "$((1+1))", "\\'", "x' 'y", "-- --help", "!!", "~root", "*", "$HOME",
    ]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=80),
)


def _values_block(script: str) -> str:
    head, _, _ = script.partition(VALUES_END)
    assert head != script, "the values block marker is missing"
    return head


@settings(max_examples=60, deadline=None)
@given(source=HOSTILE)
def test_hostile_values_stay_inert(source: str) -> None:
    if not source.strip():
        return  # empty sources are refused up front (tested below)
    script = render_startup_script(package_source=source)
    block = _values_block(script).replace("set -euo pipefail\n", "set -u\n")
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            ["bash", "-c", block + 'printf %s "$PACKAGE_SOURCE"'], cwd=d, capture_output=True, check=False, timeout=10
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.decode("utf-8", "surrogateescape") == source
        assert list(Path(d).iterdir()) == [], "a value had a side effect"


def test_script_parses_with_bash_n() -> None:
    for source in ("spotleash==0.1.0", "gs://bucket/spotleash-0.1.0-py3-none-any.whl", "$(touch pwned)\n`x`"):
        res = subprocess.run(["bash", "-n"], input=render_startup_script(package_source=source).encode(), capture_output=True, check=False)
        assert res.returncode == 0, res.stderr


def test_script_passes_shellcheck(tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck); CI installs it")
    f = tmp_path / "startup.sh"
    f.write_text(render_startup_script(package_source="https://example.com/spotleash-0.1.0-py3-none-any.whl"))
    res = subprocess.run(["shellcheck", "-s", "bash", str(f)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout


def test_script_installs_and_runs_the_agent_under_systemd() -> None:
    s = render_startup_script(package_source="spotleash")
    assert s.startswith("#!/bin/bash\n")
    assert "python3 -m venv" in s and "pip\" install" in s
    assert "-m spotleash.instance_agent --provider $AGENT_PROVIDER" in s
    assert "systemctl enable --now" in s and "StandardOutput=journal" in s


@pytest.mark.parametrize(
    "kwargs",
    [
        {"package_source": " "},
        {"provider": "aws"},
        {"install_dir": "relative/dir"},
        {"install_dir": "/opt/x\nExecStart=/bin/evil"},
        {"install_dir": "/opt/../etc"},
        {"service_name": "Bad Name"},
    ],
)
def test_unsafe_structural_values_are_refused(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        render_startup_script(**kwargs)
