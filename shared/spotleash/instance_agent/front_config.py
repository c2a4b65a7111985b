"""What the instance's TLS front is given (``instance_agent.front``), without the front itself: the agent builds
it from its config at start, and imports the front (aiohttp, the router's channel) only when a config asks for
one — an instance without a route credential never loads them, nor does the bootstrap's warm import."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class FrontConfig:
    components: Mapping[str, int]  # component name → its port on this instance's loopback
    credential_sha256: str  # sha256 (hex) of the lease credential; the credential itself never comes here
    listen_host: str = "0.0.0.0"  # noqa: S104 - the public side: TLS and a credential on every request
    listen_port: int = 8443  # 0: any free port (tests)
    upstream_host: str = "127.0.0.1"
    connect_timeout_s: float = 2.0
    idle_timeout_s: float = 300.0
    max_connections: int = 256
    common_name: str = "spotleash"
    # component → its health path: requests for it are the router's probes and leave the box idle
    quiet_paths: Mapping[str, str] = field(default_factory=dict)
    log_paths: Mapping[str, Path] = field(default_factory=dict)  # component → its log file (the supervisor's)

    def __repr__(self) -> str:
        return f"FrontConfig(components={dict(self.components)}, listen={self.listen_host}:{self.listen_port})"
