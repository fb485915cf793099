# SPDX-License-Identifier: Apache-2.0
"""The collector reports a plausible free space of the configured file system."""

from __future__ import annotations

import shutil
from typing import Any

from {{ cookiecutter.module_name }}.plugin import ExampleCollector


class Config:
    def plugin_config(self, name: str) -> dict[str, Any]:
        return {"path": "/"}


class Agent:
    config = Config()


def test_free_bytes_is_the_file_systems_free_space() -> None:
    (metric,) = ExampleCollector(Agent()).collect()
    assert metric.name == "{{ cookiecutter.metric_prefix }}_free_bytes"
    assert 0 < metric.value <= shutil.disk_usage("/").total
