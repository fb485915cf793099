# SPDX-License-Identifier: Apache-2.0
"""The plugin template in docs/plugin-template renders (cookiecutter), installs, loads in the
agent, runs once and passes its own tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

from tests.integration.test_plugins_install import inner_venv

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEMPLATE = Path(__file__).resolve().parents[2] / "docs" / "plugin-template"


def test_the_template_renders_installs_loads_and_runs(tmp_path: Path) -> None:
    rendered = Path(
        cookiecutter(
            str(TEMPLATE),
            no_input=True,
            output_dir=str(tmp_path / "out"),
            extra_context={"project_slug": "predis-diskfree", "module_name": "predis_diskfree", "plugin_name": "diskfree", "collector_name": "diskfree", "metric_prefix": "predis_diskfree"},
        )
    )
    assert (rendered / "src" / "predis_diskfree" / "plugin.py").is_file()
    for path in rendered.rglob("*.py"):
        assert path.read_text().startswith("# SPDX-License-Identifier: Apache-2.0\n"), path
        assert "{{" not in path.read_text(), path
    venv = tmp_path / "venv"
    python = inner_venv(venv)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "PIP_NO_INDEX": "1"}
    # The virtual environment's own (bundled, older) setuptools would shadow the test run's,
    # which builds wheels without the separate `wheel` package (setuptools >= 70.1).
    subprocess.run([python, "-m", "pip", "uninstall", "--disable-pip-version-check", "-y", "-q", "setuptools"], check=True, env=env, timeout=120)
    install = subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-build-isolation", "--no-deps", str(rendered)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    rows = subprocess.run([python, "-m", "agent", "plugins", "list", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert {row["name"]: row["state"] for row in json.loads(rows.stdout)}["diskfree"] == "loaded", rows.stdout + rows.stderr
    config = tmp_path / "agent.yaml"
    config.write_text(f"plugins:\n  diskfree:\n    path: {tmp_path}\n")
    once = subprocess.run(
        [python, "-m", "agent", "plugins", "run", "diskfree", "--once", "--config", str(config)], capture_output=True, text=True, env=env, timeout=120
    )
    assert once.returncode == 0, once.stdout + once.stderr
    name, value = once.stdout.split()
    assert name == "predis_diskfree_free_bytes" and float(value) > 0
    own = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(rendered / "tests")], capture_output=True, text=True, env=env, timeout=300)
    assert own.returncode == 0, own.stdout + own.stderr
