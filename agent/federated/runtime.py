# SPDX-License-Identifier: Apache-2.0
"""Flower's deployment runtime, with our apps running inside our own processes.

Flower (1.42) runs federated learning between a **SuperLink** (the server's long-running
process: the Fleet API the hosts connect to, the Control API that starts runs and the
Runtime API its apps talk to, all on one HTTP(S) port) and one **SuperNode** per host. With
``--isolation process`` neither starts the apps itself: a task waits on its Runtime API
until a process acquires it with a token. Here that process is ours: the agent acquires
its SuperNode's ClientApp tasks and runs :data:`agent.federated.flower_app.client_app` in
its own thread (so the ClientApp reads the agent's in-memory access-log ring), and
``predis-agent federated serve`` acquires its SuperLink's ServerApp task and runs
:data:`agent.federated.flower_app.server_app` in its own process. Flower's own runners
(``flwr-clientapp``, ``flwr-serverapp``) are not used: they install the run's app bundle
(FAB) from the network, install signal handlers and end with ``sys.exit``; the functions
here do the same pull / run / push through Flower's own Runtime API client and protocol
helpers, and nothing else.

The SuperLink and the SuperNode run as child processes (Flower's ``flower-superlink`` and
``flower-supernode`` console scripts, run with the agent's own Python); their output goes through our logging (logger
``predis.federated.flower``), never to our stdout.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from agent.errors import AgentError
from agent.federated import QUIET_ENV

log = logging.getLogger("predis.federated")
flower_log = logging.getLogger("predis.federated.flower")



def quiet_http_logs() -> None:
    """httpx (Flower's HTTP client) logs every request at INFO: a line per task poll."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


# Task types of Flower's Runtime API (flwr.supercore.constant.TaskType).
CLIENT_TASK = "flwr-clientapp"
SERVER_TASK = "flwr-serverapp"
# Flower colours its log lines; our logs are plain text.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The line of Flower's exit report that says why (e.g. "[code: 2004] Failed to activate SuperNode.").
_REASON = re.compile(r"^\[code: \d+\] ")
# How long a child gets to stop after SIGTERM before it is killed.
STOP_SECONDS = 10.0
# Bytes of a generated SuperExec secret (Flower derives its HMAC-SHA256 key from it).
SECRET_BYTES = 32
# A private or secret file (a SuperNode's key, a SuperExec secret) is readable by its owner only.
PRIVATE_FILE_MODE = 0o600
# The longest key or secret file read (an OpenSSH P-521 private key is about 750 bytes).
MAX_KEY_FILE_BYTES = 1 << 16
# The Runtime API call the SuperExec secret authenticates (the others need the token it hands out).
ACQUIRE_METHOD = "/flwr.proto.Runtime/AcquireTask"


class KeyFileError(AgentError, ValueError):
    """A SuperNode key or SuperExec secret file that is missing, unreadable, too open or malformed."""


class FlowerProcess:
    """A ``flower-superlink`` / ``flower-supernode`` child whose output goes to our logging,
    with a private home (0700) that holds its SuperExec secret (``secret``: the file
    ``--superexec-auth-secret-file`` names, 0600, removed with the home)."""

    def __init__(self, argv: list[str], name: str, secret: bytes | None = None) -> None:
        self.name = name
        self.last_error = ""  # the last error line it printed (the reason it exited, when it did)
        self._home = tempfile.TemporaryDirectory(prefix=f"predis-{name}-")
        if secret is not None:
            argv = [*argv, "--superexec-auth-secret-file", write_private(Path(self._home.name) / "superexec.secret", secret)]
        env = {**os.environ, **QUIET_ENV, "FLWR_HOME": self._home.name}
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self._pump = threading.Thread(target=self._forward, args=(self.process.stdout,), name=f"predis-{name}-log", daemon=True)
        self._pump.start()

    def _forward(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        for raw in stream:
            line = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip()
            if not line:
                continue
            error = "ERROR" in line or bool(_REASON.match(line))
            if error:
                self.last_error = line
            flower_log.log(logging.WARNING if error else logging.DEBUG, "%s: %s", self.name, line)

    def poll(self) -> int | None:
        return self.process.poll()

    def exit_reason(self) -> str:
        """The last error line of a child that exited (once its output is read to the end)."""
        self._pump.join(STOP_SECONDS)
        return self.last_error

    def stop(self) -> int:
        """Stop the child (SIGTERM, then SIGKILL after :data:`STOP_SECONDS`); its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._pump.join(STOP_SECONDS)
        self._home.cleanup()
        return self.process.returncode


def free_loopback_port() -> int:
    """A loopback TCP port nothing listens on now (for a SuperNode's Runtime API)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower_command(name: str) -> list[str]:
    """The argv that runs Flower's console script ``name`` with this Python (the environment
    the agent is installed in, whatever PATH says), ending when this process ends (Flower's
    own parent monitor: a SuperNode orphaned by a killed agent would stay in the fleet's
    rounds and never answer)."""
    from importlib.metadata import entry_points

    found = list(entry_points(group="console_scripts", name=name))
    if not found:
        raise FileNotFoundError(f"Flower's {name} is not installed (pip install 'predis-agent[federated]')")
    module, _, function = found[0].value.partition(":")
    code = (
        "import sys; from flwr.supercore.app_utils import start_parent_process_monitor; "
        f"start_parent_process_monitor({os.getpid()}); from {module} import {function} as main; sys.argv[0] = {name!r}; sys.exit(main())"
    )
    return [sys.executable, "-c", code]


def new_secret() -> bytes:
    """A fresh SuperExec secret (printable: Flower reads the file's exact bytes)."""
    return secrets.token_hex(SECRET_BYTES).encode("ascii")


def write_private(path: Path, data: bytes) -> str:
    """Write ``data`` to a new file ``path`` readable by its owner only; its path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return str(path)


def read_private(path: str, what: str) -> bytes:
    """The bytes of the private file ``path`` (``what`` names it in errors, never its
    content): a regular file of this user, at most :data:`PRIVATE_FILE_MODE`, not empty."""
    from agent.config import FileReadRefused, read_regular_file

    try:
        data = read_regular_file(os.path.expanduser(path), MAX_KEY_FILE_BYTES, what)
        info = os.stat(os.path.expanduser(path))
    except FileReadRefused as exc:
        raise KeyFileError(str(exc)) from None
    except OSError as exc:
        raise KeyFileError(f"{what} {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & ~PRIVATE_FILE_MODE:
        raise KeyFileError(f"{what} {path} has mode {mode:04o}, looser than {PRIVATE_FILE_MODE:04o}: others could read it; run `chmod 600 {path}` as the agent's user")
    if not data:
        raise KeyFileError(f"{what} {path} is empty")
    return data


def check_private_key(path: str) -> None:
    """Refuse a SuperNode private key Flower could not use: see :func:`read_private`, and an
    OpenSSH private key on a NIST curve (``ssh-keygen -t ecdsa -b 384``), unencrypted."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve

    data = read_private(path, "SuperNode key file")
    try:
        key = load_ssh_private_key(data, None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"SuperNode key file {path} is not an unencrypted OpenSSH private key ({type(exc).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not uses_nist_ec_curve(key.public_key()):
        raise KeyFileError(f"SuperNode key file {path} is not an ECDSA key on a NIST curve (ssh-keygen -t ecdsa -b 384)")


def load_public_key(path: Path) -> bytes:
    """A SuperNode's OpenSSH public key file (``*.pub``, ECDSA on a NIST curve), in the form
    the SuperLink registers (Flower's ``public_key_to_bytes``)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, uses_nist_ec_curve

    try:
        key = load_ssh_public_key(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"SuperNode public key {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"SuperNode public key {path} is not an OpenSSH public key ({type(exc).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not uses_nist_ec_curve(key):
        raise KeyFileError(f"SuperNode public key {path} is not an ECDSA key on a NIST curve (ssh-keygen -t ecdsa -b 384)")
    return bytes(public_key_to_bytes(key))


def start_supernode(
    superlink: str, ca_file: str | None, runtime_port: int, max_retries: int, max_wait_seconds: float, secret: bytes, private_key: str | None = None
) -> FlowerProcess:
    """The host's SuperNode: connects to ``superlink`` (TLS with ``ca_file``; authenticated
    with ``private_key``, an OpenSSH key file the server registered), serves its Runtime API
    on ``127.0.0.1:runtime_port`` and leaves the ClientApp tasks to whoever acquires them
    with ``secret`` (its SuperExec secret); it exits when it cannot reach the SuperLink within
    ``max_retries`` / ``max_wait_seconds``, or when the SuperLink refuses it."""
    argv = [*flower_command("flower-supernode"), "--superlink", superlink, "--isolation", "process", "--host", "127.0.0.1", "--port", str(runtime_port)]
    argv += ["--root-certificates", ca_file] if ca_file else ["--insecure"]
    argv += ["--max-retries", str(max_retries), "--max-wait-time", str(max_wait_seconds)]
    if private_key:
        argv += ["--auth-supernode-private-key", os.path.expanduser(private_key)]
    return FlowerProcess(argv, "supernode", secret)


def start_superlink(host: str, port: int, tls: tuple[str, str, str] | None, secret: bytes, supernode_auth: bool) -> FlowerProcess:
    """The fleet's SuperLink on ``host:port`` (``tls``: CA, certificate and key files): its
    ServerApp tasks go only to whoever acquires them with ``secret`` (its SuperExec secret);
    with ``supernode_auth`` (needs TLS), only SuperNodes whose public key was registered
    through its Control API (:func:`register_supernodes`) join."""
    argv = [*flower_command("flower-superlink"), "--isolation", "process", "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if tls is None:
        argv.append("--insecure")
    else:
        ca_file, certfile, keyfile = tls
        argv += ["--ssl-ca-certfile", ca_file, "--ssl-certfile", certfile, "--ssl-keyfile", keyfile]
    if supernode_auth:
        argv.append("--enable-supernode-auth")
    return FlowerProcess(argv, "superlink", secret)


def runtime_client(address: str, root_certificates: bytes | None, token: str | None, component: str, secret: bytes | None = None) -> Any:
    """Flower's Runtime API client (HTTP on loopback without ``root_certificates``); with
    ``secret``, its task acquisitions are signed with that SuperExec secret."""
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    if secret is not None:
        interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=[ACQUIRE_METHOD]))
    return RuntimeHttpClient.from_server_address(address, root_certificates is None, root_certificates, interceptors)


def acquire(client: Any, task_type: str) -> tuple[str, int] | None:
    """One poll of the Runtime API for a pending task of ``task_type``: its (token, run id)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest

    res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[task_type]))
    if res.HasField("task") and res.token:
        return res.token, int(res.task.run_id)
    return None


def run_client_task(address: str, token: str, app: Callable[..., Any]) -> None:
    """Pull one ClientApp task's message, answer it with ``app`` and push the reply."""
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    client = runtime_client(address, None, token, CLIENT_TASK)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    try:
        message, context, _, _ = pull_task_input(client)
        try:
            reply = app(message=message, context=context)
        except Exception as exc:
            # The server gets an error reply (a failure of this round), never silence.
            reason = f"{type(exc).__name__}: {exc}"
            push_message(client, Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message), context)
            push_task_output(client, context, SubStatus.FAILED, reason)
            raise
        push_message(client, reply, context)
        push_task_output(client, context, SubStatus.COMPLETED, "")
    finally:
        heartbeat.stop()
        client.close()


def run_server_task(address: str, root_certificates: bytes | None, token: str, app: Any, run_config: dict[str, Any]) -> Any:
    """Run ``app`` (a ServerApp) as the acquired task ``token`` with ``run_config``; its context."""
    from flwr.common.constant import SubStatus
    from flwr.common.serde import context_from_proto, run_from_proto
    from flwr.proto.runtime_pb2 import PullTaskInputRequest, PushTaskOutputRequest
    from flwr.server.run_serverapp import run
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.grid import HttpGrid

    client = runtime_client(address, root_certificates, token, SERVER_TASK)
    grid = HttpGrid(runtime_api_address=address, insecure=root_certificates is None, root_certificates=root_certificates, token=token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    status, details = SubStatus.FAILED, "the ServerApp did not finish"
    try:
        res = client.PullTaskInput(PullTaskInputRequest())
        # Flower's grid stamps the messages it sends with this process's task identity.
        TaskIdentity.task_id = res.task_id
        TaskIdentity.run_id = res.run.run_id
        TaskIdentity.node_id = res.context.node_id
        context = context_from_proto(res.context)
        grid.set_run(run_from_proto(res.run))
        context.run_config = dict(run_config)
        context = run(grid=grid, context=context, server_app_dir="", loaded_server_app=app)
        status, details = SubStatus.COMPLETED, ""
    except Exception as exc:
        details = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            client.PushTaskOutput(PushTaskOutputRequest(sub_status=status, details=details))
        finally:
            heartbeat.stop()
            grid.close()
            client.close()
    return context


def build_fab(directory: Path, run_config: dict[str, Any]) -> tuple[bytes, str]:
    """The Flower App Bundle a run is started with (its run config: ``run_config``), and its hash.

    Flower needs one to start a run; nobody installs it here (both ends run our apps from
    the installed ``predis-agent``), but its components name them for Flower's tools.
    """
    import hashlib
    import json

    from flwr.cli.build import build_fab_from_disk

    directory.mkdir(parents=True, exist_ok=True)
    # TOML reads JSON's numbers, booleans and (simple) strings the same.
    config = "".join(f"{key} = {json.dumps(value)}\n" for key, value in run_config.items())
    (directory / "pyproject.toml").write_text(f"{FAB_PYPROJECT}\n[tool.flwr.app.config]\n{config}")
    with warnings.catch_warnings():
        # Flower 1.42 builds its file filters with pathspec's deprecated "gitwildmatch" name.
        warnings.filterwarnings("ignore", message="GitWildMatchPattern", category=DeprecationWarning)
        content = build_fab_from_disk(directory)
    return content, hashlib.sha256(content).hexdigest()


FAB_PYPROJECT = """\
[project]
name = "predis-federated"
version = "1.0.0"
description = "Predis Agent: the key-free template scorer, federated"
license = "Apache-2.0"

[tool.flwr.app]
publisher = "predis"

[tool.flwr.app.components]
serverapp = "agent.federated.flower_app:server_app"
clientapp = "agent.federated.flower_app:client_app"
"""
