"""The systemd notification protocol (sd_notify), spoken over $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Send READY=1, STATUS=, WATCHDOG=1 and friends; silent when not under systemd."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path if path is not None else os.environ.get("NOTIFY_SOCKET")
        self._socket: socket.socket | None = None
        if self.path:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, *fields: str) -> None:
        if self._socket is None or not self.path:
            return
        address = self.path
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        try:
            self._socket.sendto("\n".join(fields).encode(), address)
        except OSError:
            pass  # systemd gone or socket full: never take the daemon down for a status line

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval() -> float | None:
    """Return how often to ping the watchdog (half its timeout), or None when it is off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(0.05, int(usec) / 2_000_000)
    except ValueError:
        return None
