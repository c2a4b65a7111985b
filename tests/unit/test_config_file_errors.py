"""An unreadable SPOTLEASH_CONFIG_FILE (no permission, a directory, bytes that are not UTF-8) stops
the CLI and the agent the way a missing file does: one sentence naming the variable, exit 2, no
traceback. Each case runs the real entry point as a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from spotleash.config import CONFIG_FILE_VAR, ENV_PREFIX
from spotleash.errors import ExitCode

# Without CAP_DAC_OVERRIDE root obeys file modes too: how a root test sees what a user sees.
SETPRIV = shutil.which("setpriv")
AS_A_USER = [SETPRIV, "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 and SETPRIV else []

COMMANDS = {
    "spotleash status": ["-m", "spotleash.cli", "status"],
    "spotleash agent": ["-m", "spotleash.cli", "agent"],
    "python -m spotleash.agent": ["-m", "spotleash.agent", "--run-for", "0"],
}


def no_permission(tmp: Path) -> Path:
    if os.geteuid() == 0 and not SETPRIV:
        pytest.skip("running as root without setpriv: root reads a mode-000 file")
    p = tmp / "spotleash.toml"
    p.write_text("ram_threshold = 0.9\n")
    p.chmod(0)
    return p


def a_directory(tmp: Path) -> Path:
    p = tmp / "spotleash.d"
    p.mkdir()
    return p


def not_utf8(tmp: Path) -> Path:
    p = tmp / "spotleash.toml"
    p.write_bytes(b'machine_type = "e2-highmem-4"\n# caf\xe9 \xff\xfe\n')
    return p


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "no permission": (no_permission, "permission denied"),
    "a directory": (a_directory, "is a directory"),
    "not UTF-8": (not_utf8, "not UTF-8"),
}


def run(args: list[str], config: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env |= {CONFIG_FILE_VAR: str(config), "HOME": str(home), "SPOTLEASH_STATE_DIR": str(home / "state"),
            "COLUMNS": "200"}
    return subprocess.run([*AS_A_USER, sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unreadable_config_file_is_one_sentence_and_exit_2(tmp_path: Path, command: str, case: str) -> None:
    make, expected = CASES[case]
    config = make(tmp_path)
    proc = run(COMMANDS[command], config, tmp_path)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == ExitCode.USAGE == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Errno" not in proc.stderr, proc.stderr
    assert CONFIG_FILE_VAR in err and str(config) in err and expected in err, err
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("command", list(COMMANDS))
def test_missing_and_malformed_files_still_say_so(tmp_path: Path, command: str) -> None:
    missing = run(COMMANDS[command], tmp_path / "nope.toml", tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr, missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("ram_threshold = = 0.9\n")
    malformed = run(COMMANDS[command], bad, tmp_path)
    assert malformed.returncode == 2 and re.search(r"not valid\s+TOML", malformed.stderr), malformed.stderr
    assert "Traceback" not in missing.stderr + malformed.stderr
