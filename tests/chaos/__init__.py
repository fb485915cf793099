# SPDX-License-Identifier: Apache-2.0
"""Chaos tests: a real agent under hostile config, reload storms and resource attacks keeps serving."""
