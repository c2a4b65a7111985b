"""A component's footprint is its whole process tree: a real parent and child, each holding 60 MB."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from spotleash.supervisor.footprint import footprint

MB = 2**20

HOLDER = textwrap.dedent("""
    import subprocess, sys
    buf = bytearray(60 * 2**20)
    for i in range(0, len(buf), 4096):  # touch every page: resident
        buf[i] = 1
    child = None
    if sys.argv[1] == "parent":
        child = subprocess.Popen([sys.executable, "-c", sys.argv[2], "child", ""], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
    print("ready", flush=True)
    sys.stdin.read()  # hold until the test closes stdin
    if child is not None:
        child.stdin.close()
        child.wait()
""")



def test_the_footprint_of_a_tree_counts_every_process_in_it() -> None:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, "parent", HOLDER], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline().strip() == "ready"  # both hold their 60 MB
        fp = footprint(p.pid)
        assert fp is not None and len(fp.pids) == 2 and fp.pids[0] == p.pid
        assert fp.rss_bytes >= 120 * MB
        assert fp.pss_bytes is not None and 120 * MB <= fp.pss_bytes <= fp.rss_bytes
        assert fp.uss_bytes is not None and fp.uss_bytes >= 120 * MB and fp.freeable_bytes == fp.pss_bytes
    finally:
        if p.stdin is not None:
            p.stdin.close()
        p.wait(timeout=10)
    assert footprint(p.pid) is None  # gone: nothing to measure
