# SPDX-License-Identifier: Apache-2.0
"""Update clipping, Gaussian noise and the privacy budget of a host's federated updates.

The privacy unit is the host: everything it contributes to one round. Before sending, the
host clips its update (its parameters minus the global ones it was sent) to L2 norm
``clip_norm`` and adds Gaussian noise of standard deviation ``noise_multiplier ×
clip_norm`` to every coordinate, so the server and the other hosts only ever see noised
parameters (local differential privacy; no trusted aggregator is assumed).

Two datasets of one host give clipped updates at most ``2 × clip_norm`` apart, so each
round is the Gaussian mechanism with noise multiplier ``noise_multiplier / 2`` relative
to that sensitivity. The rounds compose; the budget spent is computed by Google's
``dp-accounting`` RDP accountant (a maintained, reviewed implementation of Rényi-DP
composition and its conversion to (ε, δ)) for the configured ``delta``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy

# Two datasets of one host give clipped updates this many clip norms apart (replace adjacency).
SENSITIVITY_CLIP_NORMS = 2.0


@dataclass
class PrivacySettings:
    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    delta: float = 1e-5


def clip(update: list[numpy.ndarray], norm: float) -> tuple[list[numpy.ndarray], float]:
    """``update`` scaled down to L2 norm ``norm`` if it is longer; and its norm before."""
    total = math.sqrt(sum(float(numpy.dot(part.ravel(), part.ravel())) for part in update))
    if total <= norm or total == 0.0:
        return update, total
    scale = norm / total
    return [part * scale for part in update], total


def privatize(
    local: list[numpy.ndarray], global_params: list[numpy.ndarray], settings: PrivacySettings, rng: numpy.random.Generator
) -> tuple[list[numpy.ndarray], float | None]:
    """The parameters to send: ``global + clip(local - global) + noise``; and the update's norm.

    Without a clip norm the local parameters go as they are (and no norm is reported).
    """
    if settings.clip_norm is None:
        return local, None
    update, norm = clip([lp - gp for lp, gp in zip(local, global_params)], settings.clip_norm)
    stddev = settings.noise_multiplier * settings.clip_norm
    if stddev > 0:
        update = [part + rng.normal(0.0, stddev, size=part.shape) for part in update]
    return [gp + part for gp, part in zip(global_params, update)], norm


class PrivacyAccountant:
    """The (ε, δ) a host has spent over the noised rounds it took part in."""

    def __init__(self, settings: PrivacySettings) -> None:
        self.settings = settings
        self.rounds = 0

    @property
    def active(self) -> bool:
        return self.settings.clip_norm is not None and self.settings.noise_multiplier > 0

    def spend_round(self) -> None:
        self.rounds += 1

    def epsilon(self) -> float | None:
        """ε spent at the configured δ: None when no round was noised (no guarantee at all)."""
        if not self.active:
            return None
        if self.rounds == 0:
            return 0.0
        import dp_accounting
        from dp_accounting.rdp import RdpAccountant

        accountant = RdpAccountant()
        event = dp_accounting.GaussianDpEvent(self.settings.noise_multiplier / SENSITIVITY_CLIP_NORMS)
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, self.rounds))
        return float(accountant.get_epsilon(self.settings.delta))
