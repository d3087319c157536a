"""The lock files pin, with ``==``, every runtime requirement that pyproject.toml declares, at a version the
requirement allows; and every third-party package that src/mass imports is declared there.

That the lock installs from a clean venv is what CI checks: .ci/run builds .venv from the Makefile
(pip install -r requirements/dev.lock, then the project with --no-deps, then pip check) on a fresh clone.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)(\s*;\s*(?P<marker>.+))?$")


def _lock(name: str) -> dict[str, tuple[str, str | None]]:
    """Canonical name -> (version, marker) of every pin in requirements/<name>; other lines must be comments or -r."""
    pins: dict[str, tuple[str, str | None]] = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("-r "):
            continue
        match = PIN.match(line)
        assert match, f"{name}: not an exact pin: {line!r}"
        key = canonicalize_name(match["name"])
        assert key not in pins, f"{name}: {match['name']} pinned twice"
        if match["marker"]:
            Marker(match["marker"])  # parses
        pins[key] = (match["version"], match["marker"])
    return pins


def _check(requirements: list[str], pins: dict[str, tuple[str, str | None]], lock: str) -> None:
    for text in requirements:
        req = Requirement(text)
        key = canonicalize_name(req.name)
        assert key in pins, f"{req.name} (pyproject.toml) is not pinned in {lock}"
        version, marker = pins[key]
        assert marker is None, f"{req.name} is a direct requirement but {lock} pins it only where {marker}"
        assert req.specifier.contains(version, prereleases=True), f"{lock} pins {req.name}=={version}, outside {text!r}"


def test_pipeline_lock_pins_the_library_and_pipeline_requirements():
    _check(PROJECT["dependencies"] + PROJECT["optional-dependencies"]["pipeline"], _lock("pipeline.lock"),
           "pipeline.lock")


def test_dev_lock_adds_the_dev_tools_to_the_pipeline_lock():
    text = (ROOT / "requirements/dev.lock").read_text()
    assert "-r pipeline.lock" in text.splitlines()
    pipeline, dev = _lock("pipeline.lock"), _lock("dev.lock")
    assert not set(pipeline) & set(dev), "dev.lock repeats pins of pipeline.lock"
    _check(PROJECT["optional-dependencies"]["dev"], pipeline | dev, "dev.lock")


def test_lock_leaves_out_the_project_itself():
    for name in ("pipeline.lock", "dev.lock"):
        assert canonicalize_name(PROJECT["name"]) not in _lock(name)
        assert not re.search(r"^\s*(-e|\.|/)", (ROOT / "requirements" / name).read_text(), re.M)


def _imported_top_level_names(package: str) -> set[str]:
    """Third-party top-level modules that src/<package> imports anywhere, function bodies included."""
    names = set()
    for path in (ROOT / "src" / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"mass", "mass_pipeline", "__future__", "__main__"}


# Import name -> distribution name, for the imports whose distribution is named differently.
DISTRIBUTION = {"open_clip": "open-clip-torch", "PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml"}


def _undeclared(package: str, requirements: list[str]) -> set[str]:
    declared = {canonicalize_name(Requirement(r).name) for r in requirements}
    return {name for name in _imported_top_level_names(package)
            if canonicalize_name(DISTRIBUTION.get(name, name)) not in declared}


def test_the_library_imports_only_its_own_requirements():
    """src/mass (what ``pip install .`` gives) imports nothing of the pipeline extra, not even lazily."""
    undeclared = _undeclared("mass", PROJECT["dependencies"])
    assert not undeclared, f"src/mass imports {sorted(undeclared)}: not a library requirement of pyproject.toml"
    pipeline_imports = [str(path.relative_to(ROOT)) for path in (ROOT / "src/mass").rglob("*.py")
                        if "mass_pipeline" in {n.module.split(".")[0] for n in ast.walk(ast.parse(path.read_text()))
                                               if isinstance(n, ast.ImportFrom) and n.module}
                        | {a.name.split(".")[0] for n in ast.walk(ast.parse(path.read_text()))
                           if isinstance(n, ast.Import) for a in n.names}]
    assert not pipeline_imports, f"library modules import mass_pipeline: {pipeline_imports}"


def test_every_third_party_import_of_the_pipeline_is_declared():
    undeclared = _undeclared("mass_pipeline", PROJECT["dependencies"] + PROJECT["optional-dependencies"]["pipeline"])
    assert not undeclared, f"src/mass_pipeline imports {sorted(undeclared)}, not in pyproject's dependencies or " \
        "pipeline extra"
