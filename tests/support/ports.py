"""Port helpers for tests and benchmarks."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    """Return a TCP port that is currently free on 127.0.0.1.

    The port is released before returning, so there is a small window in which another
    process could grab it; callers that start servers should retry on "address in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
