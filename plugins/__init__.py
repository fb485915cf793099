# SPDX-License-Identifier: Apache-2.0
"""Built-in Predis Agent plugins. Each uses only the agent's public API."""
