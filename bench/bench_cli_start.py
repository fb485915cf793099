# SPDX-License-Identifier: Apache-2.0
"""Benchmark: start-up time of ``predis-agent`` commands against two interpreter baselines.

Run from the repository root::

    python bench/bench_cli_start.py             # human-readable table
    python bench/bench_cli_start.py --json      # machine-readable results
    python bench/bench_cli_start.py --markdown  # the section recorded in bench/RESULTS.md

Each command is a fresh ``python -m agent ...`` process, timed from start to exit (wall
clock); every figure is the median of ``--runs`` runs. The commands run in rounds (one run
of each per round), so a load change on a shared machine hits them all alike. Baselines,
measured in the same rounds:

* ``python -c pass``: the interpreter alone (with this environment's site packages);
* ``python -c "import yaml, jsonschema"``: what validating a config file costs at least.

Commands: ``--help``, ``version``, ``config validate config_schema/examples/agent.yaml``
with every plugin loaded (as an operator runs it), and the same with the built-in plugins
blocked (``PREDIS_AGENT_DISABLE_PLUGINS``), which is the CLI's and the config loader's
own share. Ratios are each median over the ``python -c pass`` median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_machine import machine

from agent.plugins import DEFAULT_PLUGINS, DISABLE_ENV_VAR

EXAMPLE = "config_schema/examples/agent.yaml"
BLOCK_ALL = {DISABLE_ENV_VAR: ",".join(name for name, _ in DEFAULT_PLUGINS)}
CASES: tuple[tuple[str, list[str], dict[str, str]], ...] = (
    ("python -c pass", ["-c", "pass"], {}),
    ('python -c "import yaml, jsonschema"', ["-c", "import yaml, jsonschema"], {}),
    ("predis-agent --help", ["-m", "agent", "--help"], {}),
    ("predis-agent version", ["-m", "agent", "version"], {}),
    (f"predis-agent config validate {EXAMPLE}", ["-m", "agent", "config", "validate", EXAMPLE], {}),
    ("... the same, built-in plugins blocked", ["-m", "agent", "config", "validate", EXAMPLE], BLOCK_ALL),
)
BASELINE = "python -c pass"
MS = 1000.0


def run_once(args: list[str], extra_env: dict[str, str]) -> float:
    env = {**os.environ, **extra_env}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def measure(runs: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
    for _name, args, env in CASES:  # warm the file cache once, untimed
        run_once(args, env)
    for _ in range(runs):
        for name, args, env in CASES:
            samples[name].append(run_once(args, env))
    base = statistics.median(samples[BASELINE])
    rows = []
    for name, _, _ in CASES:
        median = statistics.median(samples[name])
        rows.append({"command": name, "median_ms": median * MS, "min_ms": min(samples[name]) * MS, "ratio": median / base})
    return {"runs": runs, "machine": machine(), "rows": rows}


def render(result: dict[str, Any], markdown: bool) -> str:
    lines = []
    if markdown:
        m = result["machine"]
        lines += [
            f"Machine: {m['nproc']} CPUs (`nproc`), {m['cpu']}; Python {m['python']}.",
            f"Command: `python bench/bench_cli_start.py --markdown` (median of {result['runs']} runs each).",
            "",
            "| command | median ms | min ms | / `python -c pass` |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| `{r['command']}` | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {r['ratio']:.1f}x |" for r in result["rows"]]
    else:
        lines.append(f"{'command':<70} {'median ms':>10} {'min ms':>8} {'ratio':>7}")
        lines += [f"{r['command']:<70} {r['median_ms']:>10.0f} {r['min_ms']:>8.0f} {r['ratio']:>6.1f}x" for r in result["rows"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each command (median reported)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    result = measure(args.runs)
    print(json.dumps(result, indent=2) if args.json else render(result, args.markdown))


if __name__ == "__main__":
    main()
