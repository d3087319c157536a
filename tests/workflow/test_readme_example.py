"""The README's "Use MASS on your own checkpoints" example is real code that runs, with the library alone."""

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "own_checkpoints.py"
# What the pipeline extra brings and the library must run without (PyYAML is not among them: huggingface-hub,
# which open_clip requires, requires it).
PIPELINE_ONLY = ("pandas", "pyarrow", "optuna", "jsonschema", "snakemake", "sklearn", "matplotlib", "seaborn")


def library_closure() -> list[importlib.metadata.Distribution]:
    """The installed distributions ``pip install .`` (no extra) would bring: the library's requirements in
    pyproject.toml and, recursively, theirs (markers evaluated here, extras left out)."""
    todo = list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    seen: dict[str, importlib.metadata.Distribution] = {}
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name not in seen:
            seen[name] = importlib.metadata.distribution(name)
            todo.extend(seen[name].requires or [])
    return list(seen.values())


def library_only_path(folder: Path) -> Path:
    """``pip install .`` without the extra, into ``folder``: the project as pip builds and installs it (from a
    copy of its sources, so that no build folder lands in the repository), and links to the files of the
    installed distributions its requirements bring. On ``python -S`` (no site-packages) that folder is all
    there is."""
    source = folder.parent / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(folder), str(source)], check=True, capture_output=True)
    for dist in library_closure():
        site = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            if (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)
    return folder


def example_body() -> str:
    """The example without its module docstring: what the README shows."""
    source = EXAMPLE.read_text()
    docstring_end = ast.parse(source).body[0].end_lineno
    return "\n".join(source.splitlines()[docstring_end:]).strip()


def test_readme_shows_the_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use MASS on your own checkpoints", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1).strip()
    assert block == example_body()


def test_example_runs_with_the_library_alone_and_routes_every_image(tmp_path):
    path = library_only_path(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(path)}
    found = "import importlib.util as u, sys, mass; print(mass.__file__, [m for m in sys.argv[1:] if u.find_spec(m)])"
    probe = subprocess.run([sys.executable, "-S", "-c", found, *PIPELINE_ONLY], env=env, capture_output=True, text=True)
    assert probe.returncode == 0 and probe.stdout.split() == [str(path / "mass" / "__init__.py"), "[]"], (
        probe.stdout + probe.stderr)
    run = subprocess.run([sys.executable, "-S", str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    tasks = re.search(r"predicted task per image: +\[(.*)\]", run.stdout).group(1).split(", ")
    assert len(tasks) == 32 and {int(t) for t in tasks} <= {0, 1, 2, 3}
