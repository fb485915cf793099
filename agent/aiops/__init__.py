# SPDX-License-Identifier: Apache-2.0
"""AIOps on the agent's own measurements (the ``aiops`` config section).

Each collection round hands its samples to :class:`agent.aiops.service.AiopsService`
(off the event loop, in the collection thread), which

* forecasts the time until five resources run out (:mod:`agent.aiops.forecast`), published
  as ``predis_aiops_eta_seconds{resource}`` and ``aiops_eta_below_horizon`` events;
* watches the hit ratio, command latency, origin error rate, ops/s and breaker transitions
  for anomalies (:mod:`agent.aiops.anomaly`);
* runs the remediation actions plugins register (``predis_agent_register_remediations``;
  the built-in five are in :mod:`agent.aiops.actions`) when an operator opted them in:
  dry-run by default, rate-limited, reverted where they can be once the condition clears,
  each step written to an append-only audit log (:mod:`agent.aiops.audit`).
"""
