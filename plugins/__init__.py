# SPDX-License-Identifier: Apache-2.0
"""Built-in Predis Agent plugins. Each imports from the agent only its plugin API, ``agent.api``."""
