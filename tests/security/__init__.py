# SPDX-License-Identifier: Apache-2.0
"""Security tests: hostile input (path traversal, bad keys) must be refused, never acted on."""
