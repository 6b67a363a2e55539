"""Can a server listen on host:port? Checked before a model loads, so that a bad --host or
--port costs a fraction of a second instead of the load, and reported as one line naming
the flag to change."""

from __future__ import annotations

import errno
import socket

from agentkit.errors import BackendError

__all__ = ["address_family", "check_listen_address", "listen_error"]


def address_family(host: str, port: int) -> socket.AddressFamily:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())
        raise BackendError(
            f"--host {host}: cannot resolve it ({reason}); pass an address of this machine, "
            "e.g. --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)"
        ) from None
    families = [info[0] for info in infos]
    return socket.AF_INET if socket.AF_INET in families else families[0]  # "localhost": 127.0.0.1, as before


def listen_error(host: str, port: int, exc: OSError) -> BackendError:
    """The one-line reason a server cannot listen on host:port, naming the flag to change."""
    if exc.errno == errno.EADDRNOTAVAIL:
        return BackendError(
            f"--host {host}: not an address of this machine ({exc.strerror}); pass one of its addresses, "
            "e.g. --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)"
        )
    if exc.errno == errno.EACCES:
        return BackendError(
            f"cannot listen on {host}:{port} ({exc.strerror}); ports below 1024 need root: pick another --port, e.g. 8000"
        )
    if exc.errno == errno.EADDRINUSE:
        return BackendError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port, or --port 0 for a free one")
    return BackendError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); check --host and --port")


def check_listen_address(host: str, port: int) -> None:
    """Raise a one-line BackendError naming --host or --port and the fix unless a server can
    listen on ``host:port`` now: the port in range, the host resolvable and an address of
    this machine, the port free. Cheap (a bind on a throwaway socket): call it before
    loading a model, so that a bad value does not cost the load."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise BackendError(f"--port {port}: must be between 0 and 65535 (0 picks a free port)")
    family = address_family(host, port)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's socket
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise listen_error(host, port, exc) from None
