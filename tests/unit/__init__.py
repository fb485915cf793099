# SPDX-License-Identifier: Apache-2.0
"""Unit tests: fast and hermetic (package so module names cannot clash with tests/integration)."""
