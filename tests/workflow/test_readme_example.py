"""The README's "Use MASS on your own checkpoints" example is real code that runs."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "own_checkpoints.py"


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


def test_example_runs_and_routes_every_image():
    run = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    tasks = re.search(r"predicted task per image: +\[(.*)\]", run.stdout).group(1).split(", ")
    assert len(tasks) == 32 and {int(t) for t in tasks} <= {0, 1, 2, 3}
