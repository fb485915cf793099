# SPDX-License-Identifier: Apache-2.0
"""Test suite package (makes ``tests.plugins.*`` importable as real modules)."""
