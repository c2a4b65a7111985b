"""``python -m spotleash.instance_agent --provider NAME [--work-dir DIR]`` (NAME: a registered provider)

When its config names a package: fetch → verify → install → supervise the components, beating
meanwhile with their states. Without one: heartbeats only.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from spotleash.instance_agent import bootstrap  # the standard library only: imported before the agent's own


def _start_the_install_s_rest(argv: list[str] | None) -> None:
    """The app's requirements the bootstrap left (``bootstrap.RestInstall``) install while the imports below run."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--package-root", type=Path, default=None)
    root = pre.parse_known_args(argv)[0].package_root
    if root is not None:
        bootstrap.start_rest(root)
        # the agent's modules are compiled into its own venv once, whatever the image's PYTHONDONTWRITEBYTECODE
        # says (components keep it): a restarted agent does not compile them again
        sys.dont_write_bytecode = False


_start_the_install_s_rest(sys.argv[1:] if __name__ == "__main__" else [])

from spotleash.instance_agent.agent import agent_for  # noqa: E402 - after the install's rest has started
from spotleash.log import configure  # noqa: E402
from spotleash.providers import PROVIDER_NAMES, provider_info  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spotleash.instance_agent")
    p.add_argument("--provider", choices=PROVIDER_NAMES, required=True)
    p.add_argument("--work-dir", type=Path, default=os.environ.get("SPOTLEASH_WORK_DIR") or None,
                   help="where packages are cached, extracted and installed and component logs kept "
                        "($SPOTLEASH_WORK_DIR; default: <tmp>/spotleash-<instance id>)")
    p.add_argument("--package-root", type=Path, default=None,
                   help="a package already fetched, verified and installed (by bootstrap.py): supervise it")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    configure(args.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown our own
    agent = agent_for(args.provider, provider_info(args.provider).agent_transport, work_dir=args.work_dir,
                      package_root=args.package_root)

    def on_signal(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        agent.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return agent.run()


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is stopped and logged: skip the interpreter's teardown of ~600 modules (0.35-0.6 s measured on a
    # 2-core machine), which a VM's deletion waits for, as GCE waits for the guest to stop.
    os._exit(code)
