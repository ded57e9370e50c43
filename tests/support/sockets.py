"""What the kernel knows of a TCP connection on this machine (``/proc/net/tcp``): here,
whether the server side has read what a client sent, so a test knows that bytes it sent
have reached the server process itself, not only its socket — without sleeping."""

from __future__ import annotations

from pathlib import Path

__all__ = ["unread_bytes"]


def unread_bytes(server_port: int, client_port: int) -> int | None:
    """Bytes in the receive queue of the server's socket of the connection from
    ``client_port`` to ``server_port`` (IPv4 or IPv6): what the server has not read yet;
    None if there is no such connection."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.rsplit(":", 1)[1], 16) != server_port:
                continue
            if int(remote.rsplit(":", 1)[1], 16) != client_port:
                continue
            return int(queues.split(":")[1], 16)
    return None
