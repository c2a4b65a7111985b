"""Logs: JSON lines for files, pipes and Cloud Logging; human lines on a terminal; secrets masked in both."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import subprocess
import sys

import pytest

from spotleash.log import HumanFormatter, JsonFormatter, formatter_for

EMIT = ("from spotleash import log; log.configure('INFO'); "
        "log.get_logger('spotleash.agent').warning('lease renewal failed', lease_id='l-1', "
        "detail='timed out after 5 s', api_token='s3cret', retries=2)")
HUMAN = re.compile(r"^\d\d:\d\d:\d\d WARNING +lease renewal failed  lease_id=l-1 detail=\"timed out after 5 s\" "
                   r"api_token=\*\*\* retries=2$")


def record(**fields: object) -> logging.LogRecord:
    r = logging.LogRecord("spotleash.x", logging.INFO, __file__, 1, "instance running", None, None)
    r.fields = fields
    return r


def test_a_pipe_or_file_gets_json_and_a_terminal_gets_human_lines() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(formatter_for(io.StringIO()), JsonFormatter)
    assert isinstance(formatter_for(Tty()), HumanFormatter)
    closed = io.StringIO()
    closed.close()
    assert isinstance(formatter_for(closed), JsonFormatter)


def test_human_line_shape_and_masking() -> None:
    line = HumanFormatter().format(record(instance_id="i-1", reason=None, token="abc", note="two words", empty=""))
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO    instance running  instance_id=i-1 token=\*\*\* "
                        r"note=\"two words\" empty=\"\"", line), line
    assert "abc" not in line


def run_emit(stderr: int) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTLEASH_")}
    return subprocess.run([sys.executable, "-c", EMIT], stderr=stderr, stdout=subprocess.DEVNULL, env=env,
                          timeout=60, check=True)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_on_a_real_terminal_the_line_is_for_a_person() -> None:
    leader, follower = pty.openpty()
    try:
        run_emit(follower)
        os.close(follower)
        follower = -1
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            out += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    line = out.decode().strip()
    assert HUMAN.match(line), line
    assert "s3cret" not in line


def test_through_a_pipe_the_line_is_json_for_cloud_logging() -> None:
    proc = run_emit(subprocess.PIPE)
    entry = json.loads(proc.stderr.decode())
    assert entry["severity"] == "WARNING" and entry["message"] == "lease renewal failed"
    assert entry["lease_id"] == "l-1" and entry["api_token"] == "***" and entry["retries"] == 2
