# SPDX-License-Identifier: Apache-2.0
"""Federated learning across agents on Flower (docs/federated.md): the key-free template
scorer trained on each host and averaged by the fleet's server."""
