"""``python -m spotleash.instance_agent --provider gce|vast [--work-dir DIR]``

When its config names a package: fetch → verify → install → supervise the components, beating
meanwhile with their states. Without one: heartbeats only.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path
from types import FrameType

from spotleash.instance_agent.agent import InstanceAgent, env_source, gce_source
from spotleash.instance_agent.metadata import MetadataClient
from spotleash.log import configure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spotleash.instance_agent")
    p.add_argument("--provider", choices=["gce", "vast"], required=True)
    p.add_argument("--work-dir", type=Path, default=os.environ.get("SPOTLEASH_WORK_DIR") or None,
                   help="where packages are cached, extracted and installed and component logs kept "
                        "($SPOTLEASH_WORK_DIR; default: <tmp>/spotleash-<instance id>)")
    p.add_argument("--package-root", type=Path, default=None,
                   help="a package already fetched, verified and installed (by bootstrap.py): supervise it")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    configure(args.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown our own
    if args.provider == "gce":
        md = MetadataClient()
        agent = InstanceAgent("gce", gce_source(md), metadata=md, work_dir=args.work_dir,
                              package_root=args.package_root)
    else:
        agent = InstanceAgent("vast", env_source(), work_dir=args.work_dir, package_root=args.package_root)

    def on_signal(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        agent.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return agent.run()


if __name__ == "__main__":
    raise SystemExit(main())
