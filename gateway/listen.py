"""Whether an address can be listened on, asked before anything is started or created.

`serve` and `demo` check their `listen` address first, so a second gateway on a busy port
says so at once — without printing a banner, starting the demo shop, or creating an
outbox and its key for a process that then cannot run.
"""

from __future__ import annotations

import socket

from gateway.settings import ConfigError, split_host_port


def check_can_listen(listen: str) -> None:
    """ConfigError naming the address when it cannot be bound (in use, not ours, ...)."""
    host, port = split_host_port(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise _error(listen, str(exc)) from exc
    # Every address the server will bind (`localhost` is 127.0.0.1 and ::1), as it binds them.
    for family, kind, proto, _, address in dict.fromkeys(infos):
        with socket.socket(family, kind, proto) as sock:
            # As asyncio's server: a port in TIME_WAIT is free, one with a listener is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise _error(listen, exc.strerror or str(exc)) from exc


def _error(listen: str, reason: str) -> ConfigError:
    return ConfigError(
        f"listen: cannot listen on {listen} ({reason}); choose another --listen address"
    )
