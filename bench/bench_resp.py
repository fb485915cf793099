# SPDX-License-Identifier: Apache-2.0
"""Benchmark: our RESP server (the real agent) against redis-server, with redis-benchmark.

Run from the repository root (needs redis-server, redis-cli and redis-benchmark)::

    python bench/bench_resp.py            # human-readable table
    python bench/bench_resp.py --json     # machine-readable results
    python bench/bench_resp.py --markdown # the section recorded in bench/RESULTS.md

What runs:

* **ours**: the agent as users run it, ``python -m agent run`` with an empty config file
  in a temporary directory and ``--set cache.resp.listen=127.0.0.1:0
  --set agent.http.listen=127.0.0.1:0 --set agent.auth.token_store=<tmp>/tokens.json``
  (every other setting is the default: ``cache.backend: auto`` picks NumPy without a
  GPU). The RESP port is read from its ready line (``redis protocol: redis://...``).
* **redis**: ``redis-server --port <free> --bind 127.0.0.1 --save '' --appendonly no
  --dir <tmp>``.

Both get the same ``--keyspace`` (100,000) keys ``key:%012d`` with 3-byte values (the
key names and value size redis-benchmark uses) loaded with ``redis-cli --pipe``, so
every GET and MGET hits. Then, ``--repeat`` times, alternating which server goes first:

* ``redis-benchmark -h 127.0.0.1 -p PORT -t set -n N -c 50 -P 16 -r 100000 --csv``, then ``-t get``
  (N = ``--n``, 200,000) and the same with ``-P 1`` (N = ``--n-p1``, 100,000);
* ``redis-benchmark -h 127.0.0.1 -p PORT -n M -c 50 -P 16 -r 100000 --csv MGET
  key:__rand_int__ ...`` with 100 keys per MGET (each placeholder drawn separately;
  M = ``--n-mget``, 20,000), the same with ``-P 1``, and both for ``MSET key:__rand_int__
  xxx ...`` with 100 pairs (keys of the loaded range, values of the loaded size: the
  overwrites a client rewriting its keys sends).

Every redis-benchmark run has a fixed ``-n`` and a timeout, so the whole script is bounded
(about 90 s on 2 cores, more when the machine is busy). Reported per test: the median requests/s over the
repetitions, their min-max, and the ratio ours / redis (the median of the per-repetition
ratios, each taken between runs a few seconds apart). Also per test: each server's CPU time
(user + system, all threads, from ``/proc/PID/stat``) per request over the run, and redis's
over ours: the share of redis-server's capacity a core of ours gives, a figure the client's
scheduling on a shared machine disturbs far less than the rates (the targets stay on the
rates). The client, both servers and this script share the machine's cores, as they would on
one host. Both servers are stopped by PID at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_machine import machine

REPO = Path(__file__).resolve().parent.parent
READY = re.compile(r"redis protocol: (rediss?)://127\.0\.0\.1:(\d+)")
BACKEND = re.compile(r"cache backend: (\S+?);")
TARGETS = {"SET -P 16": 0.5, "GET -P 16": 0.5, "SET -P 1": 0.8, "GET -P 1": 0.8, "MGET x100 -P 16": 1.0, "MSET x100 -P 16": 1.0}  # ratio ours / redis
START_TIMEOUT = 60.0
RUN_TIMEOUT = 240.0


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        sys.exit(f"bench_resp: {name} is not installed (apt-get install redis-server redis-tools)")
    return path


def redis_server_version(redis_server: str) -> str:
    out = subprocess.run([redis_server, "--version"], capture_output=True, text=True, timeout=10).stdout
    return next((p[2:] for p in out.split() if p.startswith("v=")), out.strip())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def start_agent(tmp: Path, config_text: str = "{}\n", extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], int, str]:
    """Start ``python -m agent run`` and wait for its ready line; return (process, port, backend).

    ``config_text`` is the config file's content, ``extra`` more ``--set`` overrides.
    """
    config = tmp / "agent.yaml"
    config.write_text(config_text)
    out, err = tmp / "agent.out", tmp / "agent.err"
    command = [
        sys.executable, "-m", "agent", "run", "--config", str(config),
        "--set", "cache.resp.listen=127.0.0.1:0",
        "--set", "agent.http.listen=127.0.0.1:0",
        "--set", f"agent.auth.token_store={tmp / 'tokens.json'}",
    ]  # fmt: skip
    for override in extra:
        command += ["--set", override]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with out.open("wb") as fout, err.open("wb") as ferr:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=fout, stderr=ferr)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = tail(out, 100_000)
            match = READY.search(text)
            if match:
                backend = BACKEND.search(text)
                return proc, int(match.group(2)), backend.group(1) if backend else "?"
            if proc.poll() is not None:
                raise RuntimeError(f"the agent exited with {proc.returncode} before it was ready:\n{tail(err)}")
            time.sleep(0.1)
        raise RuntimeError(f"the agent printed no ready line within {START_TIMEOUT:.0f} s:\n{tail(err)}")
    except BaseException:
        stop(proc)
        raise


def start_redis(redis_server: str, cli: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    data = tmp / "redis"
    data.mkdir()
    command = [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data)]
    with (tmp / "redis.log").open("wb") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if ask(cli, port, "PING") == "PONG":
                return proc, port
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}:\n{tail(tmp / 'redis.log')}")
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")
    except BaseException:
        stop(proc)
        raise


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process by PID, then SIGKILL if it is still there after 15 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def ask(cli: str, port: int, *command: str) -> str:
    try:
        done = subprocess.run([cli, "-h", "127.0.0.1", "-p", str(port), *command], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout.strip()


def resp_command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def load(cli: str, port: int, keys: int, tmp: Path) -> None:
    """SET key:%012d -> b"xxx" for every key of the keyspace, by ``redis-cli --pipe``."""
    path = tmp / "load.resp"
    if not path.exists():
        with path.open("wb") as f:
            f.writelines(resp_command(b"SET", b"key:%012d" % i, b"xxx") for i in range(keys))
    with path.open("rb") as f:
        done = subprocess.run([cli, "-h", "127.0.0.1", "-p", str(port), "--pipe"], stdin=f, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if done.returncode != 0 or "errors: 0" not in done.stdout:
        raise RuntimeError(f"loading keys on port {port} failed: {done.stdout.strip()} {done.stderr.strip()}")
    size = ask(cli, port, "DBSIZE")
    if size != str(keys):
        raise RuntimeError(f"port {port} holds {size!r} keys after loading {keys}")


def benchmark(bench: str, port: int, args: list[str]) -> dict[str, float]:
    """Run redis-benchmark with ``args``; return {test: requests/s} from its CSV output."""
    command = [bench, "-h", "127.0.0.1", "-p", str(port), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    out: dict[str, float] = {}
    for row in csv.reader(io.StringIO(done.stdout)):
        if len(row) >= 2 and row[0] != "test":
            name = row[0].split()[0]
            out[name] = float(row[1])
    if not out:
        raise RuntimeError(f"redis-benchmark printed no CSV rows: {done.stdout.strip()[-500:]} {done.stderr.strip()[-500:]}")
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_suite(bench: str, port: int, pid: int, opts: argparse.Namespace) -> tuple[dict[str, float], dict[str, float]]:
    """Requests/s per test, and the server's CPU time per request (us) over each test."""
    common = ["-c", str(opts.clients), "-r", str(opts.keyspace), "--csv"]
    mget = ["MGET", *(["key:__rand_int__"] * opts.mget_keys)]
    mset = ["MSET", *(["key:__rand_int__", "xxx"] * opts.mget_keys)]
    rates: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def measure(label: str, name: str, n: int, args: list[str]) -> None:
        before = cpu_seconds(pid)
        rates[label] = benchmark(bench, port, ["-n", str(n), *common, *args])[name]
        cpu[label] = (cpu_seconds(pid) - before) * 1e6 / n

    for pipeline, n in ((16, opts.n), (1, opts.n_p1)):
        for test in ("SET", "GET"):
            measure(f"{test} -P {pipeline}", test, n, ["-t", test.lower(), "-P", str(pipeline)])
    for pipeline in (16, 1):
        for name, command in (("MGET", mget), ("MSET", mset)):
            measure(f"{name} x{opts.mget_keys} -P {pipeline}", name, opts.n_mget, ["-P", str(pipeline), *command])
    return rates, cpu


def summarise(runs: list[dict[str, dict[str, float]]], cpu_runs: list[dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    rows = []
    for test in runs[0]["ours"]:
        ours = [r["ours"][test] for r in runs]
        redis = [r["redis"][test] for r in runs]
        ratios = [o / r for o, r in zip(ours, redis)]
        ours_cpu = [r["ours"][test] for r in cpu_runs]
        redis_cpu = [r["redis"][test] for r in cpu_runs]
        # redis's CPU per request over ours: the share of redis-server's capacity one core of
        # ours gives, whatever the client's scheduling did to the rates.
        cpu_ratios = [rc / oc for oc, rc in zip(ours_cpu, redis_cpu) if oc > 0]
        rows.append(
            {
                "ours_cpu_us": statistics.median(ours_cpu),
                "redis_cpu_us": statistics.median(redis_cpu),
                "cpu_ratio": statistics.median(cpu_ratios) if cpu_ratios else 0.0,
                "test": test,
                "ours_rps": statistics.median(ours),
                "ours_min": min(ours),
                "ours_max": max(ours),
                "redis_rps": statistics.median(redis),
                "redis_min": min(redis),
                "redis_max": max(redis),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
        )
    return rows


def target_lines(rows: list[dict[str, Any]], mget_keys: int) -> list[str]:
    lines = []
    for row in rows:
        test = row["test"]
        target = TARGETS.get(test)
        if target is None:
            continue
        met = row["ratio"] >= target
        lines.append(
            f"target ours/redis >= {target:g} for {row['test']}: {row['ratio']:.3f}"
            f" (runs {row['ratio_min']:.3f}-{row['ratio_max']:.3f}), {'met' if met else 'NOT met'}"
        )
    return lines


def fmt(v: float) -> str:
    return f"{v / 1e3:.1f}k"


def text_table(rows: list[dict[str, Any]]) -> str:
    out = [
        f"{'test':<16} {'ours rps':>10} {'(min-max)':>16} {'redis rps':>10} {'(min-max)':>16} {'ours/redis':>10} {'(min-max)':>14}"
        f" {'CPU us/req ours':>15} {'redis':>6} {'redis/ours':>10}"
    ]
    for r in rows:
        ratio_range = f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}"
        out.append(
            f"{r['test']:<16} {fmt(r['ours_rps']):>10} {fmt(r['ours_min']) + '-' + fmt(r['ours_max']):>16}"
            f" {fmt(r['redis_rps']):>10} {fmt(r['redis_min']) + '-' + fmt(r['redis_max']):>16}"
            f" {r['ratio']:>10.3f} {ratio_range:>14}"
            f" {r['ours_cpu_us']:>15.2f} {r['redis_cpu_us']:>6.2f} {r['cpu_ratio']:>10.3f}"
        )
    return "\n".join(out)


def markdown(res: dict[str, Any], command: str) -> str:
    info, opts = res["machine"], res["options"]
    out = [
        "## RESP server vs redis-server",
        "",
        f"Machine: {info['nproc']} CPUs (`nproc`), {info['cpu']}; Python {info['python']}, NumPy {info['numpy']};"
        f" redis-server {info['redis_server']}. Our server: `python -m agent run` (cache backend: {res['backend']}).",
        f"Command: `{command}` (whole run {res['seconds']:.0f} s; {opts['repeat']} repetitions, alternating order).",
        f"redis-benchmark: `-c {opts['clients']} -r {opts['keyspace']} --csv`; `-t set` and `-t get` (one run each) `-n {opts['n']} -P 16`,"
        f" the same `-n {opts['n_p1']} -P 1`, `-n {opts['n_mget']} -P 16|1 MGET key:__rand_int__` x{opts['mget_keys']}"
        f" and `MSET key:__rand_int__ xxx` x{opts['mget_keys']};"
        f" {opts['keyspace']:,} keys loaded first on both.",
        "",
        "| test | ours rps (min-max) | redis rps (min-max) | ours / redis (min-max) | server CPU us/request: ours | redis | redis / ours |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["results"]:
        out.append(
            f"| {r['test']} | {fmt(r['ours_rps'])} ({fmt(r['ours_min'])}-{fmt(r['ours_max'])})"
            f" | {fmt(r['redis_rps'])} ({fmt(r['redis_min'])}-{fmt(r['redis_max'])})"
            f" | {r['ratio']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f})"
            f" | {r['ours_cpu_us']:.2f} | {r['redis_cpu_us']:.2f} | {r['cpu_ratio']:.3f} |"
        )
    out.append("")
    out.extend(f"- {line}" for line in res["targets"])
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=200_000, help="requests per SET/GET run with -P 16")
    parser.add_argument("--n-p1", type=int, default=100_000, help="requests per SET/GET run with -P 1")
    parser.add_argument("--n-mget", type=int, default=20_000, help="requests per MGET and per MSET run")
    parser.add_argument("--mget-keys", type=int, default=100, help="keys per MGET and per MSET")
    parser.add_argument("--clients", type=int, default=50, help="redis-benchmark -c")
    parser.add_argument("--keyspace", type=int, default=100_000, help="redis-benchmark -r, and the keys loaded first")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (medians and min-max are reported)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print machine-readable results")
    output.add_argument("--markdown", action="store_true", help="print the bench/RESULTS.md section")
    opts = parser.parse_args(argv)
    for name in ("n", "n_p1", "n_mget", "mget_keys", "clients", "keyspace", "repeat"):
        if getattr(opts, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    redis_server, cli, bench = tool("redis-server"), tool("redis-cli"), tool("redis-benchmark")
    start = time.perf_counter()
    agent = redis = None
    with tempfile.TemporaryDirectory(prefix="bench-resp-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            agent, ours_port, backend = start_agent(tmp)
            redis, redis_port = start_redis(redis_server, cli, tmp)
            ports = {"ours": ours_port, "redis": redis_port}
            for port in ports.values():
                load(cli, port, opts.keyspace, tmp)
            pids = {"ours": agent.pid, "redis": redis.pid}
            runs: list[dict[str, dict[str, float]]] = []
            cpu_runs: list[dict[str, dict[str, float]]] = []
            for rep in range(opts.repeat):
                order = ("ours", "redis") if rep % 2 == 0 else ("redis", "ours")
                suites = {name: run_suite(bench, ports[name], pids[name], opts) for name in order}
                if agent.poll() is not None:
                    raise RuntimeError(f"the agent exited with {agent.returncode} during the benchmark:\n{tail(tmp / 'agent.err')}")
                runs.append({name: suite[0] for name, suite in suites.items()})
                cpu_runs.append({name: suite[1] for name, suite in suites.items()})
        finally:
            stop(agent)
            stop(redis)
    rows = summarise(runs, cpu_runs)
    res = {
        "machine": machine(redis_server=redis_server_version(redis_server)),
        "backend": backend,
        "seconds": time.perf_counter() - start,
        "options": {k: getattr(opts, k) for k in ("n", "n_p1", "n_mget", "mget_keys", "clients", "keyspace", "repeat")},
        "runs": runs,
        "cpu_runs": cpu_runs,
        "results": rows,
        "targets": target_lines(rows, opts.mget_keys),
    }
    if opts.json:
        print(json.dumps(res, indent=2))
    elif opts.markdown:
        command = " ".join(["python bench/bench_resp.py", *(sys.argv[1:] if argv is None else argv)])
        print(markdown(res, command))
    else:
        info = res["machine"]
        print(f"{info['nproc']} CPUs, {info['cpu']}, Python {info['python']}, redis-server {info['redis_server']}, our backend {backend}")
        print(text_table(rows))
        for line in res["targets"]:
            print(line)
        print(f"total {res['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
