# SPDX-License-Identifier: Apache-2.0
"""The prefetcher's settings (``cache.prefetch``) and its counters."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class PrefetchSettings:
    """The ``cache.prefetch`` section (defaults = the schema's, except the two bandwidth
    bounds: unbounded here, so that replay and other offline uses, which run on no real
    clock's budget, measure the model rather than a rate limit; and ``model_process``:
    code that builds a prefetcher itself runs its models in the calling process unless it
    asks for a process of their own, as the agent's configuration does by default)."""

    depth: int = 2
    predict_last: int = 4
    threshold: float = 0.2
    adaptive: bool = True
    min_threshold: float = 0.05
    max_threshold: float = 0.95
    target_precision: float = 0.3
    adapt_every: int = 256
    threshold_step: float = 1.25
    max_keys_per_second: float = 0.0  # 0: unbounded
    max_bytes_per_second: float = 0.0
    queue_max_batches: int = 16384
    max_batch_keys: int = 8192
    max_cpu_share: float = 0.2
    max_pause_seconds: float = 0.05
    min_batch_keys: int = 1
    max_model_seconds_per_read: float = 0.0
    model_cpu_floor_share: float = 0.05
    model_process: bool = False
    model_process_timeout_seconds: float = 10.0
    backoff_below_accuracy: float = 0.05
    backoff_horizon_reads: int = 64
    backoff_window_reads: int = 4096
    backoff_model_seconds_per_read: float = 1e-6
    backoff_max_pause_seconds: float = 0.5
    # Share of keys never prefetched (the control share the console measures the hit ratio
    # without prefetching on; the agent sets it from ``console.control_share``).
    control_share: float = 0.0


@dataclass
class PrefetchStats:
    """What the prefetcher did: every field only grows."""

    observed: int = 0
    steps: int = 0
    candidates: int = 0
    issued: int = 0
    loaded: int = 0
    skipped_threshold: int = 0
    skipped_cached: int = 0
    skipped_bandwidth: int = 0
    origin_misses: int = 0
    origin_errors: int = 0
    dropped_batches: int = 0
    hints: int = 0
    vocabulary_resets: int = 0
    inference_seconds: float = 0.0
    challenger_errors: int = 0
    coalesced_batches: int = 0
    rest_seconds: float = 0.0
    gather_seconds: float = 0.0
    model_process_restarts: int = 0
    foresight_named: int = 0
    foresight_read: int = 0
    backoffs: int = 0
    # Served reads the worker saw with their hits, in the control share and in the rest.
    control_reads: int = 0
    control_hits: int = 0
    treated_reads: int = 0
    treated_hits: int = 0
    skipped_control: int = 0

    def carry(self, previous: PrefetchStats) -> None:
        """Add ``previous``'s counts to these (a replacement goes on from them)."""
        for spec in fields(self):
            setattr(self, spec.name, getattr(self, spec.name) + getattr(previous, spec.name))
