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
from typing import Any

from agent.config import SecretScrubFilter, scrub

ROOT_LOGGER = ""
_HANDLER_TAG = "_predis_agent_handler"


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
