"""Free loopback TCP ports, preferring the ones a data directory used last time.

Reusing the previous ports keeps settings written by an earlier run valid and stops
SeaweedFS from creating a fresh master folder (it names it after the port) on each start.
"""

import json
import socket
from contextlib import ExitStack
from pathlib import Path

from devstack.errors import PortsTakenError

LOOPBACK = "127.0.0.1"


def is_port_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers bind with SO_REUSEADDR, so a port held only by TIME_WAIT sockets is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now (the kernel's pick); also a closed port to test against."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def is_port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pick_free_ports(count: int, paired_offset: int | None) -> list[int]:
    # Hold every socket until all are chosen so the kernel never hands out a port twice.
    with ExitStack() as sockets:
        ports: list[int] = []
        while len(ports) < count * (2 if paired_offset else 1):
            sock = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
            if paired_offset is None:
                ports.append(port)
                continue
            partner = port + paired_offset
            if partner in ports or partner > 65535:
                continue
            partner_sock = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                partner_sock.bind((LOOPBACK, partner))
            except OSError:
                continue
            ports += [port, partner]
        return ports


def allocate_ports(
    data_dir: Path, service: str, count: int, *, paired_offset: int | None = None, same_as_before: bool = False
) -> list[int]:
    """Ports for `service`: last run's if all are still free, else new ones, remembered.

    With `paired_offset`, returns `count` pairs [p1, p1 + offset, p2, p2 + offset, ...].
    With `same_as_before` (a restart that running clients still point at), last run's ports
    or PortsTakenError, never new ones.
    """
    record = data_dir / "ports.json"
    remembered = json.loads(record.read_text()) if record.exists() else {}
    previous = remembered.get(service)
    total = count * 2 if paired_offset else count
    if isinstance(previous, list) and len(previous) == total and all(is_port_free(p) for p in previous):
        return previous
    if same_as_before:
        taken = [p for p in previous or [] if not is_port_free(p)]
        raise PortsTakenError(service, f"its previous ports are not free yet: {taken}")
    ports = _pick_free_ports(count, paired_offset)
    # Re-read just before writing: another service of the same stack may have recorded its ports.
    remembered = json.loads(record.read_text()) if record.exists() else {}
    remembered[service] = ports
    record.write_text(json.dumps(remembered, indent=2, sort_keys=True) + "\n")
    return ports
