# SPDX-License-Identifier: Apache-2.0
"""Logging set-up: text or JSON lines to stderr (journald), optional rotating file.

Every handler carries :class:`agent.config.SecretScrubFilter`, so a secret value that
reaches a log message by accident is replaced by ``***``. The level and format are
re-applied on every reload.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from agent.config import SecretScrubFilter, scrub

ROOT_LOGGER = ""
_HANDLER_TAG = "_predis_agent_handler"
# agent.log.rate_limit_seconds; set by configure() from the schema's default or the config.
_rate_limit_seconds = 10.0


def rate_limit_seconds() -> float:
    """The interval of :class:`RateLimitedLog` (``agent.log.rate_limit_seconds``)."""
    return _rate_limit_seconds


class RateLimitedLog:
    """One kind of repeated event, logged at most once per interval with a count of the rest.

    For events a client or the machine can make happen thousands of times a second (a
    failed ``accept()``, a refused connection, a failed AUTH): the first one is logged,
    the next ones within ``interval`` are only counted, and the first one logged after
    the interval says how many were left out. ``interval`` is
    ``agent.log.rate_limit_seconds`` unless given; ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.events = 0
        self.logged = 0
        self.suppressed = 0
        self._next_at: float | None = None

    def log(self, level: int, msg: str, *args: Any, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless one was logged less than an interval ago; True if logged."""
        self.events += 1
        now = self.clock()
        if self._next_at is not None and now < self._next_at:
            self.suppressed += 1
            return False
        interval = self.interval if self.interval is not None else _rate_limit_seconds
        if self.suppressed:
            msg = f"{msg} (and {self.suppressed} more like it since the last such line, not logged)"
        self.logger.log(level, msg, *args, exc_info=exc_info)
        self.logged += 1
        self.suppressed = 0
        self._next_at = now + interval
        return True

    def warning(self, msg: str, *args: Any, exc_info: bool = False) -> bool:
        return self.log(logging.WARNING, msg, *args, exc_info=exc_info)

    def error(self, msg: str, *args: Any, exc_info: bool = False) -> bool:
        return self.log(logging.ERROR, msg, *args, exc_info=exc_info)


class RateLimitFilter(logging.Filter):
    """A filter for a logger a client can make repeat itself (aiohttp's protocol errors):
    at most one record per interval passes, and it says how many were dropped before it.

    Records whose exception is one of ``brief`` (a client's malformed request) lose their
    traceback, which says nothing about the agent, and are written as warnings: the
    exception's first line is appended to the message instead.
    """

    def __init__(
        self,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        brief: tuple[type[BaseException], ...] = (),
    ) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.brief = brief
        self.passed = 0
        self.dropped = 0
        self._suppressed = 0
        self._next_at: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        if self._next_at is not None and now < self._next_at:
            self._suppressed += 1
            self.dropped += 1
            return False
        message = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and isinstance(exc, self.brief):
            text = str(getattr(exc, "message", "") or exc)
            summary = next((line.strip() for line in text.splitlines() if line.strip()), "")
            message = f"{message}: {exc.__class__.__name__}: {summary}".rstrip(": ")
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        if self._suppressed:
            message = f"{message} (and {self._suppressed} more like it since the last such line, not logged)"
        record.msg, record.args = message, None
        self._suppressed = 0
        self.passed += 1
        self._next_at = now + (self.interval if self.interval is not None else _rate_limit_seconds)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(body, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure(section: dict[str, Any]) -> None:
    """(Re)configure the root logger from the ``agent.log`` section."""
    global _rate_limit_seconds
    _rate_limit_seconds = float(section.get("rate_limit_seconds", _rate_limit_seconds))
    root = logging.getLogger(ROOT_LOGGER)
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_TAG, False):
            root.removeHandler(handler)
            handler.close()
    formatter: logging.Formatter = JsonFormatter() if section.get("format") == "json" else TextFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    file_cfg = section.get("file") or {}
    if file_cfg.get("path"):
        path = os.path.expanduser(file_cfg["path"])
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                path, maxBytes=int(file_cfg["max_bytes"]), backupCount=int(file_cfg["backup_count"]), encoding="utf-8"
            )
        )
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(SecretScrubFilter())
        setattr(handler, _HANDLER_TAG, True)
        root.addHandler(handler)
    root.setLevel(section.get("level", "info").upper())
    # Third-party libraries are chatty at debug; keep them at warning unless asked.
    for noisy in ("aiohttp.access", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
