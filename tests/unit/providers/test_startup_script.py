"""The startup script: hostile values stay inert, and the script passes bash -n and shellcheck."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotleash.instance_agent import bootstrap
from spotleash.providers import PROVIDER_NAMES
from spotleash.providers.embed import BOOTSTRAP_EOF, bootstrap_source, embed_file
from spotleash.providers.gce.startup_script import VALUES_END, assignments, render_startup_script

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
@given(value=HOSTILE)
def test_hostile_values_stay_inert(value: str) -> None:
    """The values block quotes every value so bash reads it back byte for byte, with no side effect."""
    script = "#!/bin/bash\nset -u\n" + assignments({"VALUE": value}) + VALUES_END + "\n"
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            ["bash", "-c", _values_block(script) + 'printf %s "$VALUE"'], cwd=d, capture_output=True, check=False,
            timeout=10,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.decode("utf-8", "surrogateescape") == value
        assert list(Path(d).iterdir()) == [], "a value had a side effect"


def test_script_values_are_only_the_structural_ones() -> None:
    block = _values_block(render_startup_script())
    assert [line.split("=", 1)[0] for line in block.splitlines()[3:]] == ["AGENT_PROVIDER", "INSTALL_DIR",
                                                                          "SERVICE_NAME"]


def test_script_parses_with_bash_n() -> None:
    for provider in PROVIDER_NAMES:
        res = subprocess.run(["bash", "-n"], input=render_startup_script(provider=provider).encode(),
                             capture_output=True, check=False)
        assert res.returncode == 0, res.stderr


def test_script_passes_shellcheck(tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck); CI installs it")
    f = tmp_path / "startup.sh"
    f.write_text(render_startup_script())
    res = subprocess.run(["shellcheck", "-s", "bash", str(f)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout


def test_script_runs_the_bootstrap_under_systemd_and_installs_nothing_from_an_index() -> None:
    s = render_startup_script()
    assert s.startswith("#!/bin/bash\n")
    assert "ExecStart=$PYTHON $INSTALL_DIR/bootstrap.py --provider $AGENT_PROVIDER --work-dir $INSTALL_DIR/work" in s
    assert "systemctl enable --now" in s and "StandardOutput=journal" in s
    outside = s.replace(bootstrap_source(), "")
    assert "pip " not in outside and "pip3" not in outside, "the script itself must not pip-install anything"


def _embedded(script: str) -> str:
    _, _, rest = script.partition(f"<<'{BOOTSTRAP_EOF}'\n")
    body, sep, _ = rest.partition(f"\n{BOOTSTRAP_EOF}\n")
    assert sep, "no embedded bootstrap"
    return body + "\n"


def test_embedded_bootstrap_is_byte_identical_to_the_module(tmp_path: Path) -> None:
    module = Path(bootstrap.__file__).read_bytes()
    assert _embedded(render_startup_script()).encode() == module
    # and what bash writes from the here-document is the module, byte for byte
    script = render_startup_script().replace("systemctl", ": systemctl").replace("apt-get", ": apt-get")
    env = {"PATH": "/usr/bin:/bin", "SPOTLEASH_VM_ROOT": str(tmp_path)}
    res = subprocess.run(["bash", "-c", script], env=env, capture_output=True, check=False, timeout=30)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "opt/spotleash/bootstrap.py").read_bytes() == module
    unit = (tmp_path / "etc/systemd/system/spotleash-agent.service").read_text()
    assert f"/opt/spotleash/bootstrap.py --provider gce --work-dir {tmp_path}/opt/spotleash/work" in unit


def test_embed_refuses_text_that_would_end_the_here_document() -> None:
    with pytest.raises(ValueError):
        embed_file('"$X"', f"a\n{BOOTSTRAP_EOF}\nb\n")
    with pytest.raises(ValueError):
        embed_file('"$X"', "no trailing newline")


@pytest.mark.parametrize(
    "kwargs",
    [
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
