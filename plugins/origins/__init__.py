# SPDX-License-Identifier: Apache-2.0
"""Built-in origin plugins: backing stores the cache reads through and prefetches from."""
