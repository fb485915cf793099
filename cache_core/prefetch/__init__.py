# SPDX-License-Identifier: Apache-2.0
"""The prefetcher: after accesses, load what the model expects next, off the request path.

Flow per observed batch of accessed keys:

1. the keys get vocabulary IDs and the model learns from them (online, in order);
2. the model predicts up to ``depth`` candidates (with confidences) after each of the
   batch's last ``predict_last`` keys;
3. candidates below the threshold, already cached, or over the bandwidth budget are
   skipped (each counted);
4. the rest are loaded from the origin in one ``load_many`` and inserted marked as
   prefetched (``Cache.mset(prefetched=True)``: never over an existing value).

One module per concern, each explaining its part:

* :mod:`~cache_core.prefetch.prefetcher`: :class:`Prefetcher`, the steps and the worker
  loop that ties the others together, and :meth:`Prefetcher.retune`;
* :mod:`~cache_core.prefetch.work_queue`: the bounded queue the request path hands read
  batches and hints to, and the joining of batches queued behind each other;
* :mod:`~cache_core.prefetch.pacing`: the worker's share of a core (rests) and its
  gathering of reads within a model-time budget per read;
* :mod:`~cache_core.prefetch.foresight`: how much of what it named was then read, and
  backing off when its model foresees almost nothing;
* :mod:`~cache_core.prefetch.threshold`: the confidence threshold and its adaptation to
  the measured precision;
* :mod:`~cache_core.prefetch.bandwidth`: the origin bandwidth budget;
* :mod:`~cache_core.prefetch.host`: the serving model and a challenger, run in the model
  process (:mod:`cache_core.model_host`) or in the worker thread;
* :mod:`~cache_core.prefetch.canary`: the canary seam (:class:`Canary`, what a rollout
  offers) that splits prefetch decisions between the serving model and a challenger;
* :mod:`~cache_core.prefetch.settings`: :class:`PrefetchSettings` and :class:`PrefetchStats`.
"""

from __future__ import annotations

from cache_core.models.steps import test_inference
from cache_core.prefetch.canary import Canary
from cache_core.prefetch.foresight import MAX_FORESIGHT
from cache_core.prefetch.prefetcher import Prefetcher
from cache_core.prefetch.settings import PrefetchSettings, PrefetchStats

__all__ = ["MAX_FORESIGHT", "Canary", "PrefetchSettings", "PrefetchStats", "Prefetcher", "test_inference"]
