"""Every ``mass.<module>`` or ``mass_pipeline.<module>`` (or ``<...>.<module>.<name>``)
named in the source, the docs and the config
exists: a module renamed or moved must take its mentions along."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# a dotted name starting at "mass." or "mass_pipeline.", not part of a path or a longer name, not a call on a
# variable called mass
NAME = re.compile(r"(?<![\w/.-])(mass(?:_pipeline)?\.[a-z_]\w*(?:\.\w+)*)(?![\w(])")
FILES = [*ROOT.glob("src/mass/**/*.py"), *ROOT.glob("src/mass_pipeline/**/*.py"), *ROOT.glob("docs/*.md"),
         ROOT / "README.md", *ROOT.glob("benchmarks/*.py"),
         *ROOT.glob("workflow/**/*.smk"), *ROOT.glob("workflow/**/*.yaml"), *ROOT.glob("workflow/**/*.py"),
         ROOT / "config.yaml", *ROOT.glob("examples/*.py")]


def resolves(dotted: str) -> bool:
    """``dotted`` is a module of the package, or an attribute path inside one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 1, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_mass_name_in_source_and_docs_imports():
    names: dict[str, str] = {}
    for path in FILES:
        for match in NAME.finditer(path.read_text(encoding="utf-8")):
            names.setdefault(match.group(1).rstrip("."), str(path.relative_to(ROOT)))
    assert len(names) > 50  # the scan finds the package's own mentions
    missing = {name: where for name, where in names.items() if name != "mass.yaml" and not resolves(name)}
    assert not missing, f"named but not importable (name: first file): {missing}"
