# SPDX-License-Identifier: Apache-2.0
"""A plugin module that fails while being imported (and so proves whether it was imported)."""

from __future__ import annotations

raise RuntimeError("import_error_plugin was imported")
