# SPDX-License-Identifier: Apache-2.0
"""The MLOps loop: datasets from exported access logs, training, registry, rollout.

Kept apart from the request path: everything here reads what the production data
collector wrote and runs in background workers or offline tools.
"""
