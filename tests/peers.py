# SPDX-License-Identifier: Apache-2.0
"""Real third-party peers on 127.0.0.1 for the push exporters' integration tests.

* :func:`victoria_metrics` runs the Debian ``victoria-metrics`` binary (it ingests the
  Datadog v1 series API under ``/datadog``) with the flags that make fresh points
  queryable at once, and :func:`vm_export` / :func:`vm_query` read data back, force-flushing
  first and polling until something is there.
* :func:`moto_server` runs moto's ``ThreadedMotoServer`` (CloudWatch) on a free port, with
  gzip request bodies inflated in front of it (moto 5.2.1 decompresses them twice).
* :class:`NewRelicReceiver` is an HTTPS stand-in for the New Relic Metric and Event APIs
  (no real server accepts that format offline): it records every request's path, headers
  and gunzipped JSON, answers 202 with ``{"requestId": ...}``, and can be told to answer
  another status for the next N requests (:meth:`NewRelicReceiver.fail_next`).
* :class:`StalledPeer` accepts TCP connections and never answers (or, trickling, never
  finishes an answer).

Every helper stops what it started, by its own handle (never by a process name).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import requests

from tests.polling import wait_for

LOOPBACK = "127.0.0.1"
VICTORIA_METRICS = shutil.which("victoria-metrics")
OPENSSL = shutil.which("openssl")
HAVE_MOTO_SERVER = importlib.util.find_spec("moto") is not None and importlib.util.find_spec("moto.server") is not None
HTTP_TIMEOUT_SECONDS = 5.0
READY_DEADLINE_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
POLL_INTERVAL_SECONDS = 0.25
CERT_DAYS = 2


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- VictoriaMetrics
@dataclass
class VictoriaMetrics:
    """A running ``victoria-metrics``; ``datadog_url`` is the Datadog ``api_host`` to use."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def datadog_url(self) -> str:
        return f"{self.base}/datadog"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_victoria_metrics(storage: Path, port: int | None = None) -> VictoriaMetrics:
    """Start VictoriaMetrics with its data under ``storage`` and wait for ``/health``."""
    if VICTORIA_METRICS is None:
        raise RuntimeError("victoria-metrics is not installed (Debian package 'victoria-metrics')")
    port = port or free_port()
    storage.mkdir(parents=True, exist_ok=True)
    log_path = storage.parent / f"{storage.name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            VICTORIA_METRICS,
            f"-storageDataPath={storage}",
            f"-httpListenAddr={LOOPBACK}:{port}",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-retentionPeriod=1d",
            "-loggerLevel=WARN",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    vm = VictoriaMetrics(port, proc, log_path)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"victoria-metrics exited {proc.returncode}: {vm.log()}")
        return requests.get(f"{vm.base}/health", timeout=HTTP_TIMEOUT_SECONDS).status_code == 200

    try:
        wait_for(healthy, timeout=READY_DEADLINE_SECONDS, interval=0.05, what="victoria-metrics /health")
    except BaseException:
        stop_victoria_metrics(vm)
        raise
    return vm


def stop_victoria_metrics(vm: VictoriaMetrics) -> None:
    if vm.proc.poll() is None:
        vm.proc.terminate()
        try:
            vm.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            vm.proc.kill()
            vm.proc.wait(timeout=STOP_TIMEOUT_SECONDS)


@contextmanager
def victoria_metrics(storage: Path, port: int | None = None) -> Iterator[VictoriaMetrics]:
    vm = start_victoria_metrics(storage, port)
    try:
        yield vm
    finally:
        stop_victoria_metrics(vm)


def vm_flush(vm: VictoriaMetrics) -> None:
    requests.get(f"{vm.base}/internal/force_flush", timeout=HTTP_TIMEOUT_SECONDS).raise_for_status()


def vm_export_once(vm: VictoriaMetrics, match: str, end: float | None = None) -> list[dict[str, Any]]:
    """Every series matching ``match`` with all its raw samples (``/api/v1/export``)."""
    vm_flush(vm)
    params: dict[str, Any] = {"match[]": match}
    if end is not None:
        params["end"] = f"{end:.3f}"
    resp = requests.get(f"{vm.base}/api/v1/export", params=params, timeout=HTTP_TIMEOUT_SECONDS)
    resp.raise_for_status()
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def vm_export(
    vm: VictoriaMetrics,
    match: str,
    until: Any = bool,
    timeout: float = READY_DEADLINE_SECONDS,
    end: float | None = None,
) -> list[dict[str, Any]]:
    """Poll :func:`vm_export_once` until ``until(series)`` is truthy; returns the series."""
    found: list[list[dict[str, Any]]] = []

    def check() -> bool:
        series = vm_export_once(vm, match, end=end)
        found[:] = [series]
        return bool(until(series))

    try:
        wait_for(check, timeout=timeout, interval=POLL_INTERVAL_SECONDS, what=f"VictoriaMetrics export of {match}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last export: {found[0] if found else None}") from None
    return found[0]


def vm_query_once(vm: VictoriaMetrics, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant PromQL/MetricsQL query: ``{sorted labels: value}``."""
    vm_flush(vm)
    url = f"{vm.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "nocache": "1"})
    data: dict[str, Any] = requests.get(url, timeout=HTTP_TIMEOUT_SECONDS).json()
    if data.get("status") != "success":
        raise AssertionError(f"query {expr!r} failed: {data}")
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in data["data"]["result"]}


def vm_query(vm: VictoriaMetrics, expr: str, until: Any = bool, timeout: float = READY_DEADLINE_SECONDS) -> dict[tuple[tuple[str, str], ...], float]:
    """Poll :func:`vm_query_once` until ``until(result)`` is truthy; returns the result."""
    found: list[dict[tuple[tuple[str, str], ...], float]] = []

    def check() -> bool:
        result = vm_query_once(vm, expr)
        found[:] = [result]
        return bool(until(result))

    try:
        wait_for(check, timeout=timeout, interval=POLL_INTERVAL_SECONDS, what=f"VictoriaMetrics query {expr}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last result: {found[0] if found else None}") from None
    return found[0]


# ----------------------------------------------------------------------------- moto (CloudWatch)
class _InflateGzipRequests:
    """WSGI middleware: inflate a gzip request body once and drop its Content-Encoding.

    botocore gzips PutMetricData bodies of 10 KiB or more (request compression). moto 5.2.1's
    server decompresses such a body twice (a Flask ``before_request`` hook in
    ``moto_server/utilities.py`` and again in ``BaseResponse.setup_class``, since the header
    still says gzip) and answers 500 ``BadGzipFile``. Inflating here, in front of moto,
    keeps the agent's real, compressed requests working with every moto version; a body
    that is not valid gzip gets the 400 a real endpoint would give.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inflated = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("HTTP_CONTENT_ENCODING", "").lower() == "gzip":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                body = gzip.decompress(environ["wsgi.input"].read(length))
            except (OSError, EOFError) as exc:
                out = f"bad gzip body: {exc}".encode()
                start_response("400 Bad Request", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
                return [out]
            del environ["HTTP_CONTENT_ENCODING"]
            environ["CONTENT_LENGTH"] = str(len(body))
            environ["wsgi.input"] = io.BytesIO(body)
            self.inflated += 1
        return self.app(environ, start_response)


def _moto_server_class() -> Any:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        create_backend_app,
    )
    from moto.server import ThreadedMotoServer
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    class MotoServer(ThreadedMotoServer):
        """ThreadedMotoServer with gzip bodies inflated in front of moto, and no request log."""

        def _server_entry(self) -> None:
            self.app = _InflateGzipRequests(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(self._ip_address, self._port, self.app, True, request_handler=QuietHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    return MotoServer


@contextmanager
def moto_server(port: int | None = None) -> Iterator[str]:
    """moto's in-process server (CloudWatch and the rest) on a free port; yields its URL."""
    port = port or free_port()
    server = _moto_server_class()(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    endpoint = f"http://{LOOPBACK}:{port}"
    try:
        wait_for(
            lambda: requests.get(f"{endpoint}/moto-api/", timeout=HTTP_TIMEOUT_SECONDS).status_code == 200,
            timeout=READY_DEADLINE_SECONDS,
            interval=0.05,
            what="moto server",
        )
        yield endpoint
    finally:
        server.stop()


# ----------------------------------------------------------------------------- TLS
@dataclass(frozen=True)
class SelfSignedCert:
    cert: Path
    key: Path


def self_signed_cert(directory: Path) -> SelfSignedCert:
    """A self-signed certificate for 127.0.0.1 and localhost, made with the openssl CLI."""
    if OPENSSL is None:
        raise RuntimeError("the openssl CLI is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", str(CERT_DAYS),
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return SelfSignedCert(cert, key)


# ----------------------------------------------------------------------------- New Relic
@dataclass
class Captured:
    """One request the receiver got, and what it answered."""

    path: str
    headers: dict[str, str]
    raw: bytes
    json: Any
    status: int
    at: float = field(default_factory=time.time)

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


@dataclass
class _Failure:
    status: int
    remaining: int
    body: str
    headers: dict[str, str]


class NewRelicReceiver:
    """An HTTPS server that takes New Relic Metric/Event API requests and records them.

    By default it answers ``202 {"requestId": ...}``; :meth:`fail_next` makes it answer
    another status (with a body and headers such as ``Retry-After``) for the next N
    requests, which are still recorded (``status`` says what they got).
    """

    def __init__(self, cert: SelfSignedCert, port: int | None = None) -> None:
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._captured: list[Captured] = []
        self._failures: list[_Failure] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                try:
                    parsed = json.loads(body) if body else None
                except ValueError:
                    parsed = None
                status, text, extra = receiver._answer()
                receiver._record(Captured(self.path, dict(self.headers.items()), body, parsed, status))
                if text is None:
                    text = json.dumps({"requestId": str(uuid.uuid4())})
                out = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self._server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="nr-receiver", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=STOP_TIMEOUT_SECONDS)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control -------------------------------------------------------------------
    def fail_next(self, status: int, count: int = 1, body: str = "", headers: dict[str, str] | None = None) -> None:
        """Answer ``status`` (with ``body`` and ``headers``) to the next ``count`` requests."""
        with self._lock:
            self._failures.append(_Failure(status, count, body, dict(headers or {})))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def pending_failures(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._failures)

    def _answer(self) -> tuple[int, str | None, dict[str, str]]:
        with self._lock:
            while self._failures and self._failures[0].remaining <= 0:
                self._failures.pop(0)
            if not self._failures:
                return 202, None, {}
            failure = self._failures[0]
            failure.remaining -= 1
            return failure.status, failure.body, failure.headers

    def _record(self, captured: Captured) -> None:
        with self._lock:
            self._captured.append(captured)

    # -- reading ---------------------------------------------------------------------
    def requests(self, path: str | None = None) -> list[Captured]:
        with self._lock:
            return [c for c in self._captured if path is None or c.path == path]

    def metrics(self, accepted_only: bool = True) -> list[dict[str, Any]]:
        """Every metric item of every Metric API request (accepted ones by default)."""
        out: list[dict[str, Any]] = []
        for c in self.requests("/metric/v1"):
            if accepted_only and c.status != 202:
                continue
            for block in c.json or []:
                out.extend(block.get("metrics", []))
        return out


# ----------------------------------------------------------------------------- a stalled peer
class StalledPeer:
    """Accepts TCP connections and never finishes an answer.

    By default it sends nothing at all. With ``trickle_every`` it reads the request, sends
    an HTTP status line and then one more header line every ``trickle_every`` seconds, for
    ever: no single read waits long, but the answer never completes (a slow-loris peer).
    """

    def __init__(self, port: int | None = None, trickle_every: float | None = None) -> None:
        self.port = port or free_port()
        self.trickle_every = trickle_every
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, self.port))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self._held: list[socket.socket] = []
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="stalled-peer", daemon=True)

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self._held)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._held.append(conn)
                if self.trickle_every is not None:
                    worker = threading.Thread(target=self._trickle, args=(conn, self.trickle_every), daemon=True)
                    self._workers.append(worker)
                    worker.start()

    def _trickle(self, conn: socket.socket, every: float) -> None:
        try:
            conn.settimeout(STOP_TIMEOUT_SECONDS)
            conn.recv(1 << 16)
            conn.sendall(b"HTTP/1.1 202 Accepted\r\n")
            # Pacing the peer's own bytes (what it simulates), not waiting for anything.
            while not self._stop.wait(every):
                conn.sendall(b"X-Trickle: 1\r\n")
        except OSError:
            return

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=STOP_TIMEOUT_SECONDS)
        self._sock.close()
        with self._lock:
            for conn in self._held:
                conn.close()
            self._held.clear()
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.join(timeout=STOP_TIMEOUT_SECONDS)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
