# SPDX-License-Identifier: Apache-2.0
"""The PID file (``agent.pid_file``): written atomically, removed only by its owner.

Why: during a restart the new agent can write its PID before the old one has finished
shutting down. An old agent that unlinked the path unconditionally deleted the *new*
agent's PID file, and ``predis-agent reload`` (SIGHUP through the file) then had nothing
to signal. So the file is replaced atomically (a reader never sees it empty or half
written) and, at shutdown, removed only when it still names this process and is still the
file this process wrote (same inode: a new agent's rename makes a new one).
"""

from __future__ import annotations

import logging
import os

from agent.security import atomic_write

log = logging.getLogger(__name__)

# World-readable, like every PID file: `predis-agent reload` may run as another user.
PID_FILE_MODE = 0o644
PID_DIR_MODE = 0o755


def write_pid_file(path: str) -> None:
    """Write this process's PID to ``path`` atomically (temp file, fsync, rename)."""
    target = os.path.abspath(os.path.expanduser(path))
    atomic_write(target, f"{os.getpid()}\n".encode("ascii"), mode=PID_FILE_MODE, dir_mode=PID_DIR_MODE)


def remove_pid_file(path: str) -> bool:
    """Remove ``path`` if it names this process; return whether it was removed.

    A file naming another PID (a newer agent's) is left in place and logged; a missing or
    unreadable file is left alone too.
    """
    target = os.path.abspath(os.path.expanduser(path))
    try:
        with open(target, encoding="ascii", errors="replace") as handle:
            content = handle.read(64).strip()
            inode = os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("PID file %s could not be read (%s); left in place", target, exc)
        return False
    if content != str(os.getpid()):
        log.info("PID file %s names PID %s, not this agent (%d): left in place for its owner", target, content[:20] or "<empty>", os.getpid())
        return False
    try:
        if os.lstat(target).st_ino != inode:
            return False
        os.unlink(target)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("PID file %s could not be removed: %s", target, exc)
        return False
    return True
