"""The fakes' HTTP server: the standard library's threading server with a real listen backlog.

``socketserver``'s default ``request_queue_size`` is 5. An instance fetches 8 blobs at a time, so on a busy
machine the kernel dropped the SYNs past the backlog and each client resent its SYN after the 1 s initial
retransmission timeout: about one fetch in six took ~1.05 s instead of ~0.35 s (the bench's blob fetch had
samples at 58 MB/s against ~500). A real Cloud Storage, Compute or VAST endpoint does not drop connections
that way."""

from __future__ import annotations

import socket
from http.server import ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = socket.SOMAXCONN
