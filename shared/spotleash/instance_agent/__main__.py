"""``python -m spotleash.instance_agent --provider gce|vast``"""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType

from spotleash.instance_agent.agent import InstanceAgent, env_source, gce_source
from spotleash.instance_agent.metadata import MetadataClient
from spotleash.log import configure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spotleash.instance_agent")
    p.add_argument("--provider", choices=["gce", "vast"], required=True)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    configure(args.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown our own
    if args.provider == "gce":
        md = MetadataClient()
        agent = InstanceAgent("gce", gce_source(md), metadata=md)
    else:
        agent = InstanceAgent("vast", env_source())

    def on_signal(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        agent.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return agent.run()


if __name__ == "__main__":
    raise SystemExit(main())
