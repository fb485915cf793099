# SPDX-License-Identifier: Apache-2.0
"""The Predis cache core. Knows nothing about the agent, exporters or config files."""
