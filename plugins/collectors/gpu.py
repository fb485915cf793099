# SPDX-License-Identifier: Apache-2.0
"""The ``gpu_metrics`` collector: per-GPU (and per-MIG-instance) metrics from NVML.

Why it is built the way it is:

* **A wedged driver must not stall collection.** Every NVML call runs in one dedicated
  daemon thread (:class:`NvmlWorker`); the collector waits for each call at most
  ``collectors.gpu.nvml_timeout_seconds``. A call that overruns makes the round report
  ``predis_gpu_up 0`` with the reason "NVML call timed out …", and no further call is
  started while it is stuck (a second thread blocked in the driver would help no one);
  collection resumes by itself once the call returns.
* **Only measured values.** A field NVML answers "not supported" (or the driver lacks the
  function) is absent, as is an NVML sentinel ("value not available", all bits set);
  nothing is exported as a placeholder zero. Throttle reasons are exported only for the
  reasons the GPU says it reports.
* **A CPU-only host is normal.** Without NVML (no driver, ``NVMLError_LibraryNotFound``)
  or without a GPU, the collector exports ``predis_gpu_up 0`` and puts the reason under
  ``components.gpu`` of ``/status``; it raises nothing, never affects readiness, and logs
  the reason once (and again only when it changes). NVML initialisation is retried each
  round, so a driver loaded later is picked up.

XID critical errors are read from an NVML event set (polled without waiting each round)
and raised as agent events of kind ``gpu_xid``; ``predis_gpu_xid_events_total`` counts
them per GPU for which NVML accepted the registration.

The collector reads ``collectors.gpu`` on every round, so a reload changes the timeout or
turns it on and off; turning it off shuts NVML down.
"""

from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.api import Metric, MetricSpec, declare_metrics, hookimpl, sample

log = logging.getLogger(__name__)

PLUGIN_NAME = "gpu_metrics"
CONFIG_SECTION = "collectors.gpu"
# The collectors.gpu section: its schema, declared through predis_agent_config_sections.
SECTION_SCHEMA: dict[str, Any] = {
    "description": "Per-GPU metrics from NVML (nvidia-ml-py). Without a GPU or driver: predis_gpu_up 0 and the reason in /status.",
    "properties": {
        "enabled": {"type": "boolean", "default": True, "description": "Collect GPU metrics through NVML."},
        "nvml_timeout_seconds": {
            "type": "number",
            "minimum": 0.05,
            "maximum": 30,
            "default": 2,
            "description": "Longest one NVML call may take before the GPU collection round is abandoned (a wedged driver cannot stall collection).",
        },
    },
}
STATUS_COMPONENT = "gpu"
NVML_MODULE = "pynvml"
DEFAULT_NVML_TIMEOUT_SECONDS = 2.0
XID_EVENT_KIND = "gpu_xid"
MAX_XID_EVENTS_PER_ROUND = 64
WHOLE_GPU = ""  # the ``mig`` label of a physical GPU's samples

# NVML enum values (nvml.h ABI), named here so that a fake NVML need not define them.
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_DEVICE_MIG_ENABLE = 1
NVML_EVENT_TYPE_XID_CRITICAL_ERROR = 8
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
# Errors that mean "this GPU or driver does not offer the field": the sample is absent.
ABSENT_ERRORS = frozenset({NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND})
# NVML's "value not available" sentinels (unsigned int and unsigned long long, all bits set).
NVML_VALUE_NOT_AVAILABLE = frozenset({0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF})

# Unit conversions.
PERCENT = 100.0
MILLIWATTS_PER_WATT = 1000.0
HERTZ_PER_MEGAHERTZ = 1_000_000.0
BYTES_PER_NVML_KB = 1024.0  # nvmlDeviceGetPcieThroughput answers KB/s

# Clock throttle ("clocks event") reason bits -> bounded ``reason`` label.
THROTTLE_REASONS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
# Newer NVML names first; older drivers' bindings only have the "throttle" spelling.
CURRENT_REASONS_FUNCS = ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
SUPPORTED_REASONS_FUNCS = ("nvmlDeviceGetSupportedClocksEventReasons", "nvmlDeviceGetSupportedClocksThrottleReasons")
EVENT_WAIT_FUNCS = ("nvmlEventSetWait_v2", "nvmlEventSetWait")

# Labels of every per-GPU sample: NVML index, MIG instance index ("" for the whole GPU), UUID.
GPU_LABELS = ("gpu", "mig", "uuid")

# Every sample this collector produces, declared once; built with :func:`sample`.
METRICS: tuple[MetricSpec, ...] = declare_metrics(
    __name__,
    (
        MetricSpec("predis_gpu_up", "gauge", "1 when NVML answered this round for at least one GPU; 0 otherwise (reason in /status)."),
        MetricSpec("predis_gpu_devices", "gauge", "GPUs NVML reports."),
        MetricSpec("predis_gpu_info", "gauge", "Always 1; labels carry each GPU's and MIG instance's identity.", GPU_LABELS + ("name",)),
        MetricSpec(
            "predis_gpu_utilization_ratio", "gauge", "Fraction of the last sample period a kernel ran on the GPU.", GPU_LABELS, unit="ratio"
        ),
        MetricSpec(
            "predis_gpu_memory_utilization_ratio",
            "gauge",
            "Fraction of the last sample period device memory was read or written.",
            GPU_LABELS,
            unit="ratio",
        ),
        MetricSpec("predis_gpu_memory_used_bytes", "gauge", "Device memory in use.", GPU_LABELS, unit="bytes"),
        MetricSpec("predis_gpu_memory_total_bytes", "gauge", "Device memory installed.", GPU_LABELS, unit="bytes"),
        MetricSpec("predis_gpu_temperature_celsius", "gauge", "GPU core temperature.", GPU_LABELS, unit="celsius"),
        MetricSpec("predis_gpu_power_draw_watts", "gauge", "Power the board draws.", GPU_LABELS, unit="watts"),
        MetricSpec("predis_gpu_power_limit_watts", "gauge", "Power limit the driver enforces.", GPU_LABELS, unit="watts"),
        MetricSpec("predis_gpu_sm_clock_hertz", "gauge", "Current SM clock.", GPU_LABELS, unit="hertz"),
        MetricSpec("predis_gpu_memory_clock_hertz", "gauge", "Current memory clock.", GPU_LABELS, unit="hertz"),
        MetricSpec(
            "predis_gpu_pcie_rx_bytes_per_second", "gauge", "PCIe receive throughput (NVML's 20 ms sample).", GPU_LABELS, unit="bytes_per_second"
        ),
        MetricSpec(
            "predis_gpu_pcie_tx_bytes_per_second", "gauge", "PCIe transmit throughput (NVML's 20 ms sample).", GPU_LABELS, unit="bytes_per_second"
        ),
        MetricSpec(
            "predis_gpu_ecc_errors_total",
            "counter",
            "ECC memory errors since the driver loaded, by type (corrected, uncorrected).",
            GPU_LABELS + ("type",),
        ),
        MetricSpec(
            "predis_gpu_throttle_active",
            "gauge",
            "1 while a clock throttle reason is active, by reason; reasons the GPU does not report are absent.",
            GPU_LABELS + ("reason",),
        ),
        MetricSpec("predis_gpu_xid_events_total", "counter", "XID critical-error events NVML delivered since the agent started.", GPU_LABELS),
        MetricSpec("predis_gpu_nvml_timeouts_total", "counter", "NVML calls that did not return within collectors.gpu.nvml_timeout_seconds."),
    ),
)
SPECS: dict[str, MetricSpec] = {spec.name: spec for spec in METRICS}


# ------------------------------------------------------------------------------- worker
class NvmlTimeout(Exception):
    """No NVML answer in time: the message is the reason shown in /status."""


class NvmlCallTimedOut(NvmlTimeout):
    """This call did not return within the timeout (it is now the stuck call)."""


class NvmlStuck(NvmlTimeout):
    """Refused at once: an earlier call that timed out has still not returned."""


@dataclass
class _Call:
    name: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    started: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class NvmlWorker:
    """Runs NVML calls one at a time in a daemon thread; callers wait with a timeout.

    Daemon, because a thread blocked in the driver must not keep the agent from exiting.
    While a call that timed out has not returned, :meth:`call` refuses new work at once.
    """

    def __init__(self, thread_name: str = "nvml") -> None:
        self.thread_name = thread_name
        self._jobs: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stuck: _Call | None = None
        self._lock = threading.Lock()

    def call(self, timeout: float, func: Callable[..., Any], *args: Any) -> Any:
        name = getattr(func, "__name__", "NVML call")
        with self._lock:
            stuck = self._stuck
            if stuck is not None:
                if not stuck.done.is_set():
                    raise NvmlStuck(
                        f"NVML call timed out: {stuck.name} has not returned for "
                        f"{time.monotonic() - stuck.started:.1f}s; no other NVML call is made until it does"
                    )
                self._stuck = None
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
                self._thread.start()
            job = _Call(name, func, args, started=time.monotonic())
            self._jobs.put(job)
            if not job.done.wait(timeout):
                self._stuck = job
                raise NvmlCallTimedOut(
                    f"NVML call timed out: {name} did not return within {timeout:g}s; "
                    "no other NVML call is made until it does"
                )
        if job.error is not None:
            raise job.error
        return job.result

    @property
    def stuck(self) -> bool:
        job = self._stuck
        return job is not None and not job.done.is_set()

    def close(self) -> None:
        """Let the thread end after its current call (it is not waited for)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.result = job.func(*job.args)
            except BaseException as exc:  # handed to the caller, whatever it is
                job.error = exc
            finally:
                job.done.set()


# ------------------------------------------------------------------------------- collector
class GpuUnavailable(Exception):
    """No GPU metrics this round; the message is the reason shown in /status."""


def _error_code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _init_reason(exc: BaseException) -> str:
    code = _error_code(exc)
    kind = exc.__class__.__name__
    if code == NVML_ERROR_LIBRARY_NOT_FOUND:
        return f"no NVIDIA driver on this host: the NVML library (libnvidia-ml.so.1) was not found ({kind})"
    if code == NVML_ERROR_DRIVER_NOT_LOADED:
        return f"the NVIDIA driver is not loaded ({kind}); load the kernel module or check the driver install"
    if code == NVML_ERROR_NO_PERMISSION:
        return f"no permission to use NVML ({kind}); the agent's user needs access to /dev/nvidia*"
    return f"NVML initialisation failed ({kind}: {exc})"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _measured(value: Any) -> float | None:
    """``value`` as a float, or None for an NVML sentinel or a negative reading."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value in NVML_VALUE_NOT_AVAILABLE or value < 0:
        return None
    return float(value)


class GpuCollector:
    """Collects NVML metrics through ``nvml`` (the ``pynvml`` module unless one is given)."""

    name = "gpu"

    def __init__(self, agent: Any, nvml: Any = None, worker: NvmlWorker | None = None) -> None:
        self.agent = agent
        self._nvml = nvml
        self.worker = worker or NvmlWorker()
        self._initialized = False
        self._driver_version: str | None = None
        self._event_set: Any = None
        self._xid_registered = False  # tried once per NVML initialisation
        self._xid_counts: dict[tuple[str, str], int] = {}
        self._logged_reason: str | None = None
        self._logged_field_errors: set[str] = set()
        self._timeout = DEFAULT_NVML_TIMEOUT_SECONDS
        self.timeouts = 0
        self.field_errors: dict[str, str] = {}
        self.state: dict[str, Any] = {"enabled": True, "up": False, "reason": "not collected yet"}

    # -- the round ------------------------------------------------------------------------
    def collect(self) -> list[Metric]:
        section = self.agent.config.section(CONFIG_SECTION)
        if not section.get("enabled", True):
            self.close()
            self._publish(False, "collectors.gpu.enabled is false", enabled=False)
            return []
        self._timeout = float(section.get("nvml_timeout_seconds", DEFAULT_NVML_TIMEOUT_SECONDS))
        try:
            samples, devices = self._round()
        except GpuUnavailable as exc:
            self._publish(False, str(exc))
            return [sample(SPECS["predis_gpu_up"], 0), self._timeouts_sample()]
        self._publish(True, None, devices=devices)
        return [sample(SPECS["predis_gpu_up"], 1), sample(SPECS["predis_gpu_devices"], devices), self._timeouts_sample(), *samples]

    def _timeouts_sample(self) -> Metric:
        return sample(SPECS["predis_gpu_nvml_timeouts_total"], self.timeouts)

    def _round(self) -> tuple[list[Metric], int]:
        self.field_errors = {}  # this round's failed fields, for /status
        nvml = self._load()
        if not self._initialized:
            try:
                self._call(nvml.nvmlInit)
            except GpuUnavailable:
                raise
            except Exception as exc:
                if not self._is_nvml_error(nvml, exc):
                    raise
                raise GpuUnavailable(_init_reason(exc)) from None
            self._initialized = True
            version = self._optional(nvml, "nvmlSystemGetDriverVersion")
            self._driver_version = _text(version) if version is not None else None
        try:
            count = int(self._call(nvml.nvmlDeviceGetCount))
        except GpuUnavailable:
            raise
        except Exception as exc:
            if not self._is_nvml_error(nvml, exc):
                raise
            raise GpuUnavailable(f"NVML could not count the GPUs ({exc.__class__.__name__}: {exc})") from None
        if count <= 0:
            raise GpuUnavailable("NVML found no GPU on this host")
        out: list[Metric] = []
        handles: list[tuple[str, str, Any]] = []
        for index in range(count):
            handle = self._optional(nvml, "nvmlDeviceGetHandleByIndex", index, what=f"gpu {index} handle")
            if handle is None:
                continue
            gpu = str(index)
            uuid = self._identity(nvml, handle, gpu, WHOLE_GPU, out)
            handles.append((gpu, uuid, handle))
            out.extend(self._device_samples(nvml, handle, {"gpu": gpu, "mig": WHOLE_GPU, "uuid": uuid}))
            out.extend(self._mig_samples(nvml, handle, gpu))
        if not handles:
            raise GpuUnavailable(f"NVML reports {count} GPU(s) but gave no handle for any: {self.field_errors}")
        if not self._xid_registered:
            self._xid_registered = True
            self._register_xid(nvml, handles)
        out.extend(self._xid_samples(nvml, handles))
        return out, count

    # -- NVML access ----------------------------------------------------------------------
    def _load(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module(NVML_MODULE)
            except ImportError as exc:
                raise GpuUnavailable(f"pynvml is not importable ({exc}); install nvidia-ml-py") from None
        return self._nvml

    def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run one NVML call under the timeout; a timeout ends the round as GpuUnavailable."""
        try:
            return self.worker.call(self._timeout, func, *args)
        except NvmlTimeout as exc:
            if isinstance(exc, NvmlCallTimedOut):
                self.timeouts += 1
            raise GpuUnavailable(str(exc)) from None

    @staticmethod
    def _is_nvml_error(nvml: Any, exc: BaseException) -> bool:
        base = getattr(nvml, "NVMLError", None)
        return isinstance(base, type) and isinstance(exc, base)

    def _optional(self, nvml: Any, func_name: str, *args: Any, what: str | None = None) -> Any:
        """The call's result, or None when NVML does not offer it (or it failed: noted once)."""
        func = getattr(nvml, func_name, None)
        if func is None:
            return None
        try:
            return self._call(func, *args)
        except GpuUnavailable:
            raise
        except Exception as exc:
            if not self._is_nvml_error(nvml, exc):
                raise
            code = _error_code(exc)
            if code in ABSENT_ERRORS or code == NVML_ERROR_NOT_FOUND:
                return None
            self._field_error(what or func_name, f"{exc.__class__.__name__}: {exc}")
            return None

    def _first(self, nvml: Any, names: tuple[str, ...], *args: Any) -> Any:
        for name in names:
            if getattr(nvml, name, None) is not None:
                return self._optional(nvml, name, *args)
        return None

    def _field_error(self, what: str, message: str) -> None:
        self.field_errors[what] = message
        key = f"{what}: {message}"
        if key not in self._logged_field_errors:
            self._logged_field_errors.add(key)
            log.warning("gpu collector: %s failed (%s); that value is left out", what, message)

    # -- samples --------------------------------------------------------------------------
    def _identity(self, nvml: Any, handle: Any, gpu: str, mig: str, out: list[Metric]) -> str:
        uuid_value = self._optional(nvml, "nvmlDeviceGetUUID", handle)
        uuid = _text(uuid_value) if uuid_value is not None else ""
        name_value = self._optional(nvml, "nvmlDeviceGetName", handle)
        labels = {"gpu": gpu, "mig": mig, "uuid": uuid, "name": _text(name_value) if name_value is not None else ""}
        out.append(sample(SPECS["predis_gpu_info"], 1, labels))
        return uuid

    def _put(self, out: list[Metric], name: str, value: Any, labels: dict[str, str], scale: float = 1.0) -> None:
        measured = _measured(value)
        if measured is not None:
            out.append(sample(SPECS[name], measured * scale, labels))

    def _memory_and_utilization(self, nvml: Any, handle: Any, labels: dict[str, str], out: list[Metric]) -> None:
        util = self._optional(nvml, "nvmlDeviceGetUtilizationRates", handle)
        if util is not None:
            self._put(out, "predis_gpu_utilization_ratio", getattr(util, "gpu", None), labels, 1 / PERCENT)
            self._put(out, "predis_gpu_memory_utilization_ratio", getattr(util, "memory", None), labels, 1 / PERCENT)
        memory = self._optional(nvml, "nvmlDeviceGetMemoryInfo", handle)
        if memory is not None:
            self._put(out, "predis_gpu_memory_used_bytes", getattr(memory, "used", None), labels)
            self._put(out, "predis_gpu_memory_total_bytes", getattr(memory, "total", None), labels)

    def _device_samples(self, nvml: Any, handle: Any, labels: dict[str, str]) -> list[Metric]:
        out: list[Metric] = []
        self._memory_and_utilization(nvml, handle, labels, out)
        put, opt = self._put, self._optional
        put(out, "predis_gpu_temperature_celsius", opt(nvml, "nvmlDeviceGetTemperature", handle, NVML_TEMPERATURE_GPU), labels)
        put(out, "predis_gpu_power_draw_watts", opt(nvml, "nvmlDeviceGetPowerUsage", handle), labels, 1 / MILLIWATTS_PER_WATT)
        put(out, "predis_gpu_power_limit_watts", opt(nvml, "nvmlDeviceGetEnforcedPowerLimit", handle), labels, 1 / MILLIWATTS_PER_WATT)
        put(out, "predis_gpu_sm_clock_hertz", opt(nvml, "nvmlDeviceGetClockInfo", handle, NVML_CLOCK_SM), labels, HERTZ_PER_MEGAHERTZ)
        put(out, "predis_gpu_memory_clock_hertz", opt(nvml, "nvmlDeviceGetClockInfo", handle, NVML_CLOCK_MEM), labels, HERTZ_PER_MEGAHERTZ)
        for name, counter in (
            ("predis_gpu_pcie_rx_bytes_per_second", NVML_PCIE_UTIL_RX_BYTES),
            ("predis_gpu_pcie_tx_bytes_per_second", NVML_PCIE_UTIL_TX_BYTES),
        ):
            put(out, name, opt(nvml, "nvmlDeviceGetPcieThroughput", handle, counter), labels, BYTES_PER_NVML_KB)
        for kind, error_type in (("corrected", NVML_MEMORY_ERROR_TYPE_CORRECTED), ("uncorrected", NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
            value = opt(nvml, "nvmlDeviceGetTotalEccErrors", handle, error_type, NVML_VOLATILE_ECC)
            put(out, "predis_gpu_ecc_errors_total", value, {**labels, "type": kind})
        out.extend(self._throttle_samples(nvml, handle, labels))
        return out

    def _throttle_samples(self, nvml: Any, handle: Any, labels: dict[str, str]) -> list[Metric]:
        supported = _measured(self._first(nvml, SUPPORTED_REASONS_FUNCS, handle))
        if supported is None:
            return []
        current = _measured(self._first(nvml, CURRENT_REASONS_FUNCS, handle))
        if current is None:
            return []
        mask, active = int(supported), int(current)
        spec = SPECS["predis_gpu_throttle_active"]
        return [sample(spec, 1 if active & bit else 0, {**labels, "reason": reason}) for bit, reason in THROTTLE_REASONS if mask & bit]

    def _mig_samples(self, nvml: Any, handle: Any, gpu: str) -> list[Metric]:
        mode = self._optional(nvml, "nvmlDeviceGetMigMode", handle)
        if not mode or mode[0] != NVML_DEVICE_MIG_ENABLE:
            return []
        slots = _measured(self._optional(nvml, "nvmlDeviceGetMaxMigDeviceCount", handle))
        out: list[Metric] = []
        for index in range(int(slots or 0)):
            mig_handle = self._optional(nvml, "nvmlDeviceGetMigDeviceHandleByIndex", handle, index)
            if mig_handle is None:  # an empty slot answers "not found"
                continue
            mig = str(index)
            uuid = self._identity(nvml, mig_handle, gpu, mig, out)
            # Clocks, power, temperature, PCIe, ECC and throttling belong to the physical
            # GPU; repeating them per instance would double them in every sum.
            self._memory_and_utilization(nvml, mig_handle, {"gpu": gpu, "mig": mig, "uuid": uuid}, out)
        return out

    # -- XID events -----------------------------------------------------------------------
    def _register_xid(self, nvml: Any, handles: list[tuple[str, str, Any]]) -> None:
        event_set = self._optional(nvml, "nvmlEventSetCreate", what="XID event set")
        if event_set is None:
            return
        for gpu, uuid, handle in handles:
            func = getattr(nvml, "nvmlDeviceRegisterEvents", None)
            if func is None:
                break
            try:
                self._call(func, handle, NVML_EVENT_TYPE_XID_CRITICAL_ERROR, event_set)
            except GpuUnavailable:
                raise
            except Exception as exc:
                if not self._is_nvml_error(nvml, exc):
                    raise
                if _error_code(exc) not in ABSENT_ERRORS:
                    self._field_error(f"gpu {gpu} XID event registration", f"{exc.__class__.__name__}: {exc}")
                continue
            self._xid_counts.setdefault((gpu, uuid), 0)
        self._event_set = event_set

    def _xid_samples(self, nvml: Any, handles: list[tuple[str, str, Any]]) -> list[Metric]:
        wait = next((getattr(nvml, n) for n in EVENT_WAIT_FUNCS if getattr(nvml, n, None) is not None), None)
        if self._event_set is None or not self._xid_counts or wait is None:
            return []
        by_uuid = {uuid: gpu for gpu, uuid, _handle in handles}
        for _ in range(MAX_XID_EVENTS_PER_ROUND):
            try:
                data = self._call(wait, self._event_set, 0)
            except GpuUnavailable:
                raise
            except Exception as exc:
                if not self._is_nvml_error(nvml, exc):
                    raise
                if _error_code(exc) != NVML_ERROR_TIMEOUT:  # timeout: no event pending
                    self._field_error("XID event wait", f"{exc.__class__.__name__}: {exc}")
                break
            self._on_xid(nvml, data, by_uuid)
        spec = SPECS["predis_gpu_xid_events_total"]
        return [sample(spec, n, {"gpu": gpu, "mig": WHOLE_GPU, "uuid": uuid}) for (gpu, uuid), n in sorted(self._xid_counts.items())]

    def _on_xid(self, nvml: Any, data: Any, by_uuid: dict[str, str]) -> None:
        uuid_value = self._optional(nvml, "nvmlDeviceGetUUID", getattr(data, "device", None))
        uuid = _text(uuid_value) if uuid_value is not None else ""
        gpu = by_uuid.get(uuid, "")
        key = (gpu, uuid)
        if key in self._xid_counts:
            self._xid_counts[key] += 1
        xid = int(getattr(data, "eventData", 0))
        log.warning("GPU %s (%s) reported XID %d", gpu or "?", uuid or "unknown UUID", xid)
        emit = getattr(self.agent, "emit", None)
        if emit is not None:
            # Imported here, not at import: it loads the agent's runtime.
            from agent.api import Event

            emit(Event(XID_EVENT_KIND, {"gpu": gpu, "uuid": uuid, "xid": xid}))

    # -- state ----------------------------------------------------------------------------
    def _publish(self, up: bool, reason: str | None, *, enabled: bool = True, devices: int = 0) -> None:
        self.state = {
            "enabled": enabled,
            "up": up,
            "reason": reason,
            "devices": devices,
            "driver_version": self._driver_version,
            "nvml_timeouts": self.timeouts,
            "field_errors": dict(self.field_errors),
            "checked_at": time.time(),
        }
        components = getattr(self.agent, "component_status", None)
        if isinstance(components, dict):
            components[STATUS_COMPONENT] = self.state
        if reason != self._logged_reason:
            if reason is None:
                log.info("GPU metrics available: %d GPU(s) through NVML", devices)
            elif self.worker.stuck:
                log.warning("GPU metrics unavailable: %s", reason)
            else:
                log.info("GPU metrics unavailable: %s", reason)
            self._logged_reason = reason

    def close(self) -> None:
        """Free the event set and shut NVML down (skipped while a call is stuck)."""
        if self._initialized and self._nvml is not None and not self.worker.stuck:
            nvml = self._nvml
            try:
                if self._event_set is not None and getattr(nvml, "nvmlEventSetFree", None) is not None:
                    self._call(nvml.nvmlEventSetFree, self._event_set)
                self._call(nvml.nvmlShutdown)
            except GpuUnavailable as exc:
                log.warning("NVML shutdown skipped: %s", exc)
            except Exception as exc:
                if not self._is_nvml_error(nvml, exc):
                    raise
                log.info("NVML shutdown failed: %s: %s", exc.__class__.__name__, exc)
        self._initialized = False
        self._event_set = None
        self._xid_registered = False
        self._xid_counts.clear()
        if not self.worker.stuck:
            self.worker.close()


# One collector per agent, so that a re-registration or shutdown can release NVML.
_COLLECTORS: weakref.WeakKeyDictionary[Any, GpuCollector] = weakref.WeakKeyDictionary()


@hookimpl
def predis_agent_config_sections() -> dict[str, dict[str, Any]]:
    return {CONFIG_SECTION: SECTION_SCHEMA}


@hookimpl
def predis_agent_config_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "Loads the GPU (NVML) collector; whether it runs and its NVML timeout are under collectors.gpu.",
        "properties": {},
    }


@hookimpl
def predis_agent_register_collectors(agent: Any) -> list[GpuCollector]:
    previous = _COLLECTORS.pop(agent, None)
    if previous is not None:
        previous.close()
    collector = _COLLECTORS[agent] = GpuCollector(agent)
    return [collector]


@hookimpl
def predis_agent_shutdown(agent: Any) -> None:
    collector = _COLLECTORS.pop(agent, None)
    if collector is not None:
        collector.close()
