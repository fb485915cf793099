# SPDX-License-Identifier: Apache-2.0
"""{{ cookiecutter.project_name }}: one collector, its config section and its metrics.

Plugins import only ``agent.api`` (the stable plugin API, docs/plugins.md). Try it with
``predis-agent plugins run {{ cookiecutter.collector_name }} --once``.
"""

from __future__ import annotations

import os
from typing import Any

from agent.api import Metric, MetricSpec, declare_metrics, hookimpl, sample

PLUGIN_NAME = "{{ cookiecutter.plugin_name }}"
# The plugin's own section, plugins.{{ cookiecutter.plugin_name }} (validated by the agent).
CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "path": {"type": "string", "default": "/", "description": "File system whose free space is reported."},
    },
}
METRICS = declare_metrics(
    __name__,
    (MetricSpec("{{ cookiecutter.metric_prefix }}_free_bytes", "gauge", "Free bytes of the file system at plugins.{{ cookiecutter.plugin_name }}.path.", unit="bytes"),),
)
SPECS = {spec.name: spec for spec in METRICS}


class ExampleCollector:
    """Reports the free space of one file system, read on every collection round."""

    name = "{{ cookiecutter.collector_name }}"

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def collect(self) -> list[Metric]:
        path = self.agent.config.plugin_config(PLUGIN_NAME).get("path", "/")
        stats = os.statvfs(path)
        return [sample(SPECS["{{ cookiecutter.metric_prefix }}_free_bytes"], stats.f_bavail * stats.f_frsize)]


@hookimpl
def predis_agent_config_schema() -> dict[str, Any]:
    return CONFIG_SCHEMA


@hookimpl
def predis_agent_register_collectors(agent: Any) -> list[ExampleCollector]:
    return [ExampleCollector(agent)]
