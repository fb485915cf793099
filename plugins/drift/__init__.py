# SPDX-License-Identifier: Apache-2.0
"""Built-in drift detectors, one plugin per test (DESIGN §2): ks, psi, distance, chi2, adwin.

Each registers through ``predis_agent_register_drift_detectors`` and returns per-feature
:class:`agent.mlops.drift.DetectorResult` entries; combining them (correction, minimum
windows) is :func:`agent.mlops.drift.run_check`'s job, not a plugin's.
"""
