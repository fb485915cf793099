# SPDX-License-Identifier: Apache-2.0
"""Built-in collector plugins: what the agent measures each collection round."""
