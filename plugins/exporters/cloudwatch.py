# SPDX-License-Identifier: Apache-2.0
"""CloudWatch exporter: PutMetricData through boto3, under every documented API limit.

Configured under ``exporters.cloudwatch``. Metric names are the agent's (Prometheus)
names; labels become dimensions, plus ``exporters.cloudwatch.dimensions``. Gauges are
sent as ``Value``, counters as deltas (unit ``Count``, or the counter's own unit such as
``Seconds`` or ``Bytes``), histograms as ``Values``/``Counts``
— one value per non-empty bucket, its upper bound (the ``+Inf`` bucket takes the largest
finite bound), so CloudWatch can estimate percentiles; more than
:data:`MAX_VALUES_PER_DATUM` buckets are merged pairwise. A histogram without observations
in the interval sends nothing.

Checked before sending, because CloudWatch (and moto in tests) reports most of these only
by rejecting the whole call: at most :data:`MAX_DATUMS_PER_CALL` datums and
:data:`MAX_REQUEST_BYTES` per call, :data:`MAX_DIMENSIONS` dimensions per datum (extra ones
are trimmed, counted and logged, never silently), names up to :data:`MAX_NAME_LENGTH`,
dimension values up to :data:`MAX_DIMENSION_VALUE_LENGTH` and non-empty, finite values
within :data:`MAX_ABS_VALUE`, storage resolution 1 or 60.

Credentials: the default boto3 chain, or ``profile``; with ``role_arn`` the exporter
assumes the role through STS and assumes it again after an auth failure (expired token).
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.api import (
    DeltaTracker,
    ExportAuthError,
    InvalidPayloadError,
    Payload,
    PayloadTooLargeError,
    TransientExportError,
    hookimpl,
)
from plugins.exporters.base import (
    EncodeReport,
    LabelMemo,
    Point,
    chunk,
    halve,
    json_size,
    to_points,
)

if TYPE_CHECKING:
    import botocore.config
    import botocore.exceptions

log = logging.getLogger(__name__)

NAME = "cloudwatch"
SECTION = "exporters.cloudwatch"
# The exporters.cloudwatch section: its schema, declared through predis_agent_config_sections.
SECTION_SCHEMA: dict[str, Any] = {
    "description": "AWS CloudWatch PutMetricData through boto3, packed as Values/Counts and StatisticValues under the API limits.",
    "properties": {
        "enabled": {"type": "boolean", "default": False, "description": "Push to CloudWatch."},
        "namespace": {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            "pattern": r"^(?!AWS/)[^:\u0000-\u001f\u007f]+$(?!\n)",
            "default": "Predis",
            "description": "Metric namespace (must not start with AWS/; no colon or control character).",
        },
        "region": {
            "type": ["string", "null"],
            "pattern": r"^[a-z0-9-]+$(?!\n)",
            "default": None,
            "description": "AWS region; null: the default chain's (AWS_REGION, profile).",
        },
        "endpoint_url": {
            "type": ["string", "null"],
            "pattern": r"^https?://[^\s]+$(?!\n)",
            "default": None,
            "description": "Endpoint override (a VPC endpoint, or a test server).",
        },
        "profile": {
            "type": ["string", "null"],
            "default": None,
            "description": "Named profile from the shared AWS config; null: the default credential chain.",
        },
        "role_arn": {
            "type": ["string", "null"],
            "pattern": r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$(?!\n)",
            "default": None,
            "description": "Role to assume through STS before sending; null: use the credentials as they are.",
        },
        "storage_resolution": {"type": "integer", "enum": [1, 60], "default": 60, "description": "1 (high resolution) or 60 seconds."},
        "dimensions": {
            "type": "object",
            "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 1024},
            "maxProperties": 10,
            "default": {},
            "description": "Dimensions added to every datum (e.g. Host).",
        },
        "alarms": {
            "type": "array",
            "default": [],
            "maxItems": 100,
            "description": "Alarms to create or update (PutMetricAlarm) at start and on reload.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["metric", "threshold"],
                "properties": {
                    "metric": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$(?!\n)", "description": "Agent metric name."},
                    "threshold": {"type": "number"},
                    "comparison": {
                        "type": "string",
                        "enum": ["GreaterThanThreshold", "GreaterThanOrEqualToThreshold", "LessThanThreshold", "LessThanOrEqualToThreshold"],
                        "default": "GreaterThanThreshold",
                    },
                    "statistic": {"type": "string", "enum": ["Average", "Sum", "Minimum", "Maximum", "SampleCount"], "default": "Average"},
                    "period": {"type": "integer", "enum": [10, 30, 60, 300, 900, 3600], "default": 60},
                    "evaluation_periods": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3},
                },
            },
        },
        "interval": {
            "type": "number",
            "minimum": 1,
            "maximum": 86400,
            "default": 10,
            "description": "Seconds between two pushes (a multiple of agent.collect.interval_seconds is sensible; rounds in between are skipped).",
        },
    },
}

MAX_DATUMS_PER_CALL = 1000
MAX_REQUEST_BYTES = 1_000_000
MAX_DIMENSIONS = 30
MAX_VALUES_PER_DATUM = 150
MAX_NAME_LENGTH = 255
MAX_DIMENSION_NAME_LENGTH = 255
MAX_DIMENSION_VALUE_LENGTH = 1024
# Values outside -2^360 .. 2^360 are rejected.
MAX_ABS_VALUE = 2.0**360
STORAGE_RESOLUTIONS = (1, 60)
# Bytes of request framing around the datums (namespace, JSON envelope), generously.
REQUEST_OVERHEAD_BYTES = 512

UNITS = {"seconds": "Seconds", "bytes": "Bytes", "ratio": "None", "celsius": "None", "watts": "None", "hertz": "None", "bytes_per_second": "Bytes/Second"}

_AUTH_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "MissingAuthenticationToken",
}
_THROTTLE_CODES = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException", "ServiceUnavailable", "InternalFailure"}
_TOO_LARGE_CODES = {"RequestEntityTooLarge", "RequestEntityTooLargeException"}


class CloudWatchExporter:
    name = NAME

    def __init__(self, agent: Any, section: Mapping[str, Any], attempt_timeout: float) -> None:
        self.agent = agent
        self.namespace = str(section.get("namespace", "Predis"))
        self.region = section.get("region")
        self.endpoint_url = section.get("endpoint_url")
        self.profile = section.get("profile")
        self.role_arn = section.get("role_arn")
        resolution = int(section.get("storage_resolution", 60))
        if resolution not in STORAGE_RESOLUTIONS:
            raise ValueError(f"exporters.cloudwatch.storage_resolution must be 1 or 60, found {resolution}")
        self.storage_resolution = resolution
        self.dimensions = [{"Name": str(k), "Value": str(v)} for k, v in (section.get("dimensions") or {}).items()]
        self.alarms = list(section.get("alarms") or [])
        self.timeout = attempt_timeout
        self.deltas = DeltaTracker()
        self._label_memo = LabelMemo(self._dims)
        self.last_report = EncodeReport()
        self._client: Any = None
        self._alarms_done = not self.alarms

    # -- encoding -----------------------------------------------------------------
    def _dims(self, labels: Mapping[str, str], report: EncodeReport) -> list[dict[str, str]]:
        dims = list(self.dimensions)
        taken = {d["Name"] for d in dims}
        for k, v in sorted(labels.items()):
            if k[:MAX_DIMENSION_NAME_LENGTH] in taken:
                # A configured dimension of the same name wins; a name twice is rejected.
                report.trim("duplicate_dimension")
                continue
            if not v:
                report.trim("empty_dimension_value")
                continue
            if len(v) > MAX_DIMENSION_VALUE_LENGTH:
                report.trim("dimension_value_length")
                v = v[:MAX_DIMENSION_VALUE_LENGTH]
            dims.append({"Name": k[:MAX_DIMENSION_NAME_LENGTH], "Value": v})
        if len(dims) > MAX_DIMENSIONS:
            report.trim("dimensions", len(dims) - MAX_DIMENSIONS)
            dims = dims[:MAX_DIMENSIONS]
        return dims

    def _datum(self, p: Point, report: EncodeReport) -> dict[str, Any] | None:
        if len(p.name) > MAX_NAME_LENGTH:
            report.reject("name_too_long")
            return None
        datum: dict[str, Any] = {
            "MetricName": p.name,
            "Dimensions": self._label_memo.get(p.labels, report),
            "Timestamp": p.timestamp,
            "StorageResolution": self.storage_resolution,
        }
        if p.kind == "summary" and not p.buckets:
            return None  # see _datums
        if p.kind == "summary":
            values = _pack([(b if math.isfinite(b) else p.high, c) for b, c in p.buckets if c > 0])
            if not values:
                return None
            if any(abs(v) > MAX_ABS_VALUE for v, _ in values):
                report.reject("value_out_of_range")
                return None
            datum["Values"] = [v for v, _ in values]
            datum["Counts"] = [c for _, c in values]
            datum["Unit"] = UNITS.get(p.unit, "None")
            return datum
        if abs(p.value) > MAX_ABS_VALUE:
            report.reject("value_out_of_range")
            return None
        datum["Value"] = p.value
        # A counter of seconds or bytes keeps its unit; a plain count is Count.
        unit = UNITS.get(p.unit, "None")
        datum["Unit"] = "Count" if p.kind == "count" and unit == "None" else unit
        return datum

    def _datums(self, p: Point, report: EncodeReport) -> list[dict[str, Any]]:
        """One datum, or ``<name>_count`` and ``<name>_sum`` for a summary without buckets
        (StatisticValues would need a minimum and maximum the summary does not have)."""
        if p.kind == "summary" and not p.buckets:
            parts = [
                Point(f"{p.name}_count", "count", p.labels, p.timestamp, value=p.count, interval=p.interval),
                Point(f"{p.name}_sum", "gauge", p.labels, p.timestamp, value=p.sum, interval=p.interval, unit=p.unit),
            ]
            return [d for part in parts if (d := self._datum(part, report)) is not None]
        one = self._datum(p, report)
        return [one] if one is not None else []

    def _body(self, datums: list[dict[str, Any]]) -> dict[str, Any]:
        return {"Namespace": self.namespace, "MetricData": datums}

    def encode(self, batch: list[Any]) -> list[Payload]:
        report = EncodeReport()
        datums = [d for p in to_points(batch, self.deltas, report) for d in self._datums(p, report)]
        overhead = json_size(self._body([])) + REQUEST_OVERHEAD_BYTES
        payloads = []
        for run, size in chunk(datums, max_items=MAX_DATUMS_PER_CALL, max_bytes=MAX_REQUEST_BYTES, overhead=overhead):
            if size > MAX_REQUEST_BYTES:
                report.reject("datum_too_large", len(run))
                continue
            payloads.append(Payload(body=self._body(run), points=len(run), nbytes=size))
        if report.trimmed:
            log.warning("cloudwatch: trimmed to fit the API limits: %s", report.trimmed)
        report.points = sum(p.points for p in payloads)
        report.payloads = len(payloads)
        report.bytes = sum(p.nbytes for p in payloads)
        self.last_report = report
        return payloads

    def split(self, payload: Payload) -> list[Payload] | None:
        return halve(payload, "MetricData", self._body, len)

    # -- sending ------------------------------------------------------------------
    def _session(self) -> Any:
        import boto3  # here, not at import: loading the plugin stays cheap

        session = boto3.Session(profile_name=self.profile, region_name=self.region)
        if not self.role_arn:
            return session
        sts = session.client("sts", endpoint_url=self.endpoint_url, config=self._config())
        creds = sts.assume_role(RoleArn=self.role_arn, RoleSessionName="predis-agent")["Credentials"]
        return boto3.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
            region_name=self.region or session.region_name,
        )

    def _config(self) -> botocore.config.Config:
        import botocore.config

        # One attempt per call: the sink retries, with its backoff and breaker.
        return botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=self.timeout, read_timeout=self.timeout)

    def client(self) -> Any:
        if self._client is None:
            import botocore.exceptions

            try:
                self._client = self._session().client("cloudwatch", endpoint_url=self.endpoint_url, config=self._config())
            except botocore.exceptions.ClientError as exc:
                raise _classify(exc) from None
            except (botocore.exceptions.BotoCoreError, ValueError) as exc:
                raise ExportAuthError(f"cloudwatch: cannot set up the client: {exc}") from None
        return self._client

    def refresh_credentials(self) -> None:
        self._client = None

    def send(self, payload: Payload, timeout: float) -> None:
        if timeout != self.timeout:
            self.timeout = timeout
            self._client = None
        import botocore.exceptions

        client = self.client()
        if not self._alarms_done:
            self._put_alarms(client)
        body = payload.body
        data = [{**d, "Timestamp": datetime.datetime.fromtimestamp(d["Timestamp"], datetime.UTC)} for d in body["MetricData"]]
        try:
            client.put_metric_data(Namespace=body["Namespace"], MetricData=data)
        except botocore.exceptions.ClientError as exc:
            raise _classify(exc) from None
        except botocore.exceptions.ParamValidationError as exc:
            raise InvalidPayloadError(f"cloudwatch: {exc}", answer=str(exc)) from None
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise TransientExportError(f"cloudwatch: {exc.__class__.__name__}: {exc}") from None

    def _put_alarms(self, client: Any) -> None:
        import botocore.exceptions

        for alarm in self.alarms:
            try:
                client.put_metric_alarm(
                    AlarmName=f"{self.namespace}-{alarm['metric']}-{alarm.get('comparison', 'GreaterThanThreshold')}",
                    Namespace=self.namespace,
                    MetricName=alarm["metric"],
                    Dimensions=self.dimensions,
                    Statistic=alarm.get("statistic", "Average"),
                    Period=int(alarm.get("period", 60)),
                    EvaluationPeriods=int(alarm.get("evaluation_periods", 3)),
                    Threshold=float(alarm["threshold"]),
                    ComparisonOperator=alarm.get("comparison", "GreaterThanThreshold"),
                )
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                log.error("cloudwatch: cannot put the alarm on %s: %s", alarm["metric"], exc)
                return
        self._alarms_done = True

    def abort(self) -> None:
        """Drop the client of a stuck send (the sink's attempt deadline passed)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _pack(values: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most MAX_VALUES_PER_DATUM (value, count) pairs: merge neighbours pairwise.

    Equal neighbours (the ``+Inf`` bucket mapped to the largest finite bound) are merged
    first: PutMetricData lists each unique value once."""
    unique: list[tuple[float, float]] = []
    for value, count in values:
        if unique and unique[-1][0] == value:
            unique[-1] = (value, unique[-1][1] + count)
        else:
            unique.append((value, count))
    values = unique
    while len(values) > MAX_VALUES_PER_DATUM:
        merged = []
        for i in range(0, len(values), 2):
            pair = values[i : i + 2]
            merged.append((pair[-1][0], sum(c for _, c in pair)))
        values = merged
    return values


def _classify(exc: botocore.exceptions.ClientError) -> Exception:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    text = f"cloudwatch: {code or 'error'} (HTTP {status}): {error.get('Message', '')}"
    answer = str(error.get("Message", ""))
    if code in _AUTH_CODES or status in (401, 403):
        return ExportAuthError(text, status=status, answer=answer)
    if code in _TOO_LARGE_CODES or status == 413:
        return PayloadTooLargeError(text, status=status, answer=answer)
    if code in _THROTTLE_CODES or status >= 500 or status == 429:
        return TransientExportError(text, status=status, answer=answer)
    return InvalidPayloadError(text, status=status, answer=answer)


@hookimpl
def predis_agent_config_sections() -> dict[str, dict[str, Any]]:
    return {SECTION: SECTION_SCHEMA}


@hookimpl
def predis_agent_register_exporters(agent: Any, config: Any) -> list[Any]:
    section = agent.config.section(SECTION)
    if not section.get("enabled"):
        return []
    return [CloudWatchExporter(agent, section, float(agent.config.get("agent.sinks.attempt_timeout_seconds")))]
