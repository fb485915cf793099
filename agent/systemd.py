# SPDX-License-Identifier: Apache-2.0
"""sd_notify: READY, RELOADING, STOPPING, STATUS and WATCHDOG messages.

Implemented on a plain AF_UNIX datagram socket (the protocol is one datagram of
``KEY=value`` lines), so there is no dependency and nothing happens without
``NOTIFY_SOCKET``. Abstract sockets (``@name``) are supported. A send failure is
logged once and never raised: systemd integration must not take the agent down.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._warned = False
        self.watchdog_interval = self._watchdog_interval()

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    @staticmethod
    def _watchdog_interval() -> float | None:
        """Half of ``WATCHDOG_USEC`` when systemd asked this process for watchdog pings."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 2_000_000 if value > 0 else None

    def notify(self, *lines: str) -> bool:
        if not self.address:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        payload = "\n".join(lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(target)
                sock.sendall(payload)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %s failed: %s", self.address, exc)
                self._warned = True
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *( [f"STATUS={status}"] if status else []), f"MAINPID={os.getpid()}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")
