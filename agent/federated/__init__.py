# SPDX-License-Identifier: Apache-2.0
"""Federated learning across agents on Flower (docs/federated.md): the key-free template
scorer trained on each host and averaged by the fleet's server."""

import os

# Flower reports usage to its servers and checks for updates unless told not to; a host
# agent never phones home. Set here, before any module of this package imports flwr (it
# reads them on import), and passed to the SuperLink / SuperNode children.
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
for _name, _value in QUIET_ENV.items():
    os.environ.setdefault(_name, _value)

# SecAgg+ settings of ``predis-agent federated serve`` (Flower's SecAggPlusWorkflow; the
# quantisation error they allow is derived in docs/federated.md).
# Shares of each host's secret: a fraction of the round's hosts (1.0: every other host).
SECAGG_NUM_SHARES = 1.0
# Shares needed to reconstruct a secret: a fraction of the shares.
SECAGG_RECONSTRUCTION_THRESHOLD = 0.67
# Parameters are clipped to [-range, range] before quantisation (rates lie in [0, 1]; the
# margin keeps a noised host's rates unclipped).
SECAGG_CLIPPING_RANGE = 2.0
# Integers the clipped range is quantised to (2**22, Flower's default).
SECAGG_QUANTIZATION_RANGE = 1 << 22
# A host's weight is its example count over this (it should be above the largest host's count).
SECAGG_MAX_WEIGHT = 100_000.0
