# SPDX-License-Identifier: Apache-2.0
"""NOTICE and deploy/constraints.txt cover the runtime dependency closure, as installed."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "supply_chain.py"
NOTICE = ROOT / "NOTICE"
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("supply_chain", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["supply_chain"] = module
    spec.loader.exec_module(module)
    return module


def _notice_names(text: str) -> set[str]:
    # Dependency lines are "  <name>  <licence>" after the paragraph that introduces them.
    _, _, listing = text.partition("licence metadata:\n")
    listing = listing.partition("\nOptional, extra")[0]
    return {canonicalize_name(line.split()[0]) for line in listing.splitlines() if line.startswith("  ") and line.strip()}


def _independent_closure() -> set[str]:
    """The install_requires closure walked here with importlib.metadata alone."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    todo = [Requirement(line.strip()) for line in parser.get("options", "install_requires").splitlines() if line.strip()]
    names: set[str] = set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": next(iter(req.extras), "")}):
            continue
        name = canonicalize_name(req.name)
        if name in names:
            continue
        names.add(name)
        for text in metadata.requires(req.name) or []:
            child = Requirement(text)
            if child.marker is None or child.marker.evaluate({"extra": ""}):
                todo.append(child)
    return names


def test_notice_and_constraints_are_current() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_runtime_dependency_is_named_in_notice() -> None:
    closure = _independent_closure()
    # The closure is deeper than setup.cfg's list: aiohttp's own dependencies are in it.
    assert {"aiohttp", "yarl", "multidict", "scipy", "numpy"} <= closure
    missing = closure - _notice_names(NOTICE.read_text(encoding="utf-8"))
    assert not missing, f"runtime dependencies missing from NOTICE: {sorted(missing)}"


def test_check_fails_when_a_dependency_is_removed_from_notice(tmp_path: Path) -> None:
    text = NOTICE.read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.split()[:1] == ["yarl"])
    broken = tmp_path / "NOTICE"
    broken.write_text(text.replace(line + "\n", ""), encoding="utf-8")
    assert "yarl" not in _notice_names(broken.read_text(encoding="utf-8"))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "check", "--notice", str(broken)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "is stale" in proc.stderr and str(broken) in proc.stderr


def test_notice_names_the_vendored_uplot_and_licences_from_metadata() -> None:
    text = NOTICE.read_text(encoding="utf-8")
    assert re.search(r"^  uPlot\s+MIT, in agent/console/static/uplot/$", text, re.M)
    module = _script()
    # License-Expression, a one-line License field, or the trove classifiers: never empty.
    for dist in module.runtime_dists():
        assert dist.license and "\n" not in dist.license, dist
    licences = {d.name: d.license for d in module.runtime_dists()}
    assert licences["aiohttp"].startswith("Apache-2.0")
    assert licences["pyyaml"] == "MIT"


GPU_MARKER = '# extra "gpu"'


def _pins(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_installed_versions_satisfy_the_constraints() -> None:
    runtime_text, _, gpu_text = CONSTRAINTS.read_text(encoding="utf-8").partition(GPU_MARKER)
    runtime = _pins(runtime_text)
    assert set(runtime) == _independent_closure()
    gpu = _pins(gpu_text.partition("\n")[2])
    assert "cupy-cuda12x" in gpu and not set(gpu) & set(runtime)
    installed = {name: pin for name, pin in {**runtime, **gpu}.items() if name in runtime or _installed(name)}
    wrong = {name: (pin, metadata.version(name)) for name, pin in installed.items() if metadata.version(name) != pin}
    assert not wrong, f"installed versions differ from deploy/constraints.txt (pinned, installed): {wrong}"


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_notice_and_constraints_name_the_same_gpu_distributions() -> None:
    _, _, gpu_text = CONSTRAINTS.read_text(encoding="utf-8").partition(GPU_MARKER)
    _, _, gpu_notice = NOTICE.read_text(encoding="utf-8").partition('Optional, extra "gpu"')
    notice_names = {canonicalize_name(line.split()[0]) for line in gpu_notice.splitlines()[1:] if line.startswith("  ")}
    assert notice_names == set(_pins(gpu_text.partition("\n")[2]))


def test_constraints_satisfy_setup_cfg_lower_bounds() -> None:
    module = _script()
    pins = _pins(CONSTRAINTS.read_text(encoding="utf-8"))
    for req in module.install_requires():
        assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), (req, pins[canonicalize_name(req.name)])


def _pip_dry_run(constraints: Path) -> subprocess.CompletedProcess[str]:
    # --no-index: every dependency must be satisfied by what is installed, at the pinned
    # version, so the resolution is pip's own check of the pins, offline.
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
         "--disable-pip-version-check", "-c", str(constraints), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )


def test_pip_resolves_the_package_with_the_constraints() -> None:
    proc = _pip_dry_run(CONSTRAINTS)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Would install predis-agent-" in proc.stdout


def test_pip_refuses_a_pin_below_setup_cfg(tmp_path: Path) -> None:
    bad = tmp_path / "constraints.txt"
    bad.write_text(re.sub(r"^numpy==.*$", "numpy==1.25.0", CONSTRAINTS.read_text(), flags=re.M))
    proc = _pip_dry_run(bad)
    assert proc.returncode != 0
    assert "ResolutionImpossible" in proc.stderr
