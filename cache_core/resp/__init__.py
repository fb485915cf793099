# SPDX-License-Identifier: Apache-2.0
"""The Redis-protocol (RESP2/RESP3) server of the cache."""
