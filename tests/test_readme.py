"""The README's module table is the tree: every module of helpdeskd/ is named, none that is not."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_module_table_names_every_module_and_no_other() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## How it is built") : readme.index("## Tests")]
    named = set(re.findall(r"`([a-z_/]+\.py)`", section))
    tree = {
        str(path.relative_to(ROOT / "helpdeskd"))
        for path in (ROOT / "helpdeskd").rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py") and "_data" not in path.parts
    }
    assert named == tree, {"missing": sorted(tree - named), "not in the tree": sorted(named - tree)}
