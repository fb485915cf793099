# SPDX-License-Identifier: Apache-2.0
"""The append-only audit log of remediation actions: one JSON object per line.

The file is opened for appending only (``O_APPEND``), created 0600 in a directory created
0700, never through a symbolic link; every record is written whole and synced before the
action it records is reported done. The newest records are also kept in memory for
``/status``.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

# Records /status shows (the file keeps them all).
RECENT_RECORDS = 20


class AuditLog:
    def __init__(self, path: str | None) -> None:
        self.path = Path(os.path.expanduser(path)) if path else None
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_RECORDS)
        self.written = 0
        self.error: str | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise OSError when the log cannot be opened for appending (dry-build)."""
        if self.path is not None:
            os.close(self._open())

    def _open(self) -> int:
        assert self.path is not None
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
        except OSError:
            os.close(fd)
            raise
        return fd

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line (synced); kept in memory even when the write fails."""
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self._lock:
            self.recent.append(record)
            if self.path is None:
                return
            try:
                fd = self._open()
                try:
                    os.write(fd, line.encode("utf-8"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self.written += 1
                self.error = None
            except OSError as exc:
                self.error = f"{self.path}: {exc.strerror or exc}"
                raise

    def public(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "written": self.written, "error": self.error, "recent": list(self.recent)}
