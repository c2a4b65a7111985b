"""The router: requests follow the component, and none is lost when an instance goes away.

Decisions (see each module for the details):

**One stable local port per component.** The router listens on ``127.0.0.1:<listen_port>`` for each
component and forwards the request unchanged (same path, query, headers, body) to the current target.
A port rather than a path prefix, because apps hardcode base URLs like ``http://localhost:8101``: with
a port each, an app's configuration changes from the local copy's port to the router's port and nothing
else — no path rewriting, no broken absolute links or redirects, cookies and CORS untouched.

**Targets change on events.** A Firestore ``on_snapshot`` listener on the lease's instance records
(``watch``) delivers READY (with endpoints and the certificate fingerprint), the preemption flag,
TERMINATING / TERMINATED and the lease's ``released`` flag about a second after the control plane
writes them — no poll. The router's own active probes of each remote copy (through the same channel
the traffic takes) decide whether it is actually reachable, and take it out of use within ``fall``
probe intervals when it dies or freezes, even if the listener is down. Every decision is a pure
function (``table.decide_target`` / ``RouteTable``); ``proxy`` only acts on it.

**The channel is TLS pinned by fingerprint, plus a per-lease credential** (``channel``): the instance
runs one authenticating TLS front (``spotleash.instance_agent.front``) with a self-signed certificate
made at start, whose SHA-256 it reports over its token-authenticated heartbeat; the router accepts
exactly that certificate. Each request carries the lease credential, which the front checks in constant
time against its hash before anything reaches a component; components listen on loopback only. Chosen
over an SSH tunnel because it keeps HTTP/1.1 keep-alive pools, per-request streaming and concurrency in
one asyncio process (paramiko's ``direct-tcpip`` channels are thread-driven and add a hop per request),
it needs one open port per instance (VAST maps one container port), and one failing connection fails
one request, not a tunnel every request shares.

Entry points: ``RouterService`` (a thread, for the synchronous agent) over ``Router`` (asyncio).
"""

from spotleash.router.channel import (
    COMPONENT_HEADER,
    CREDENTIAL_HEADER,
    TlsIdentity,
    credential_hash,
    make_identity,
    new_credential,
)
from spotleash.router.proxy import ComponentRoute, Limits, Router, RouterConfig
from spotleash.router.service import RouterService, firestore_watch
from spotleash.router.table import (
    Policy,
    Probes,
    RemoteState,
    Route,
    RouteTable,
    TargetKind,
    decide_target,
)

__all__ = [
    "COMPONENT_HEADER", "CREDENTIAL_HEADER", "ComponentRoute", "Route", "Limits", "Policy", "Probes",
    "RemoteState", "RouteTable", "Router", "RouterConfig", "RouterService", "TargetKind", "TlsIdentity",
    "credential_hash", "decide_target", "firestore_watch", "make_identity", "new_credential",
]
