# SPDX-License-Identifier: Apache-2.0
"""Real plugin modules used by the unit tests of agent.plugins."""
