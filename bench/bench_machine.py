# SPDX-License-Identifier: Apache-2.0
"""What a benchmark ran on, described the same way by every script in bench/.

Figures from different CPUs are not comparable (bench/RESULTS.md says which machine each
section was measured on), so every script records this next to its results.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine(**extra: Any) -> dict[str, Any]:
    """CPUs usable by this process, CPU model, Python, NumPy and platform, plus ``extra``."""
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        **extra,
        "platform": platform.platform(),
    }
