"""README "Layout" lists every module of the tree and nothing that is not there (a move updates both)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _listed() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout\n"):text.index("### Glossary")]
    out: set[str] = set()
    items = re.sub(r"\n  +", " ", section).splitlines()  # one line per list item
    for line in items:
        m = re.match(r"- `((?:fedunlearn|strategies|clients)/[^`]+\.py)`(.*?) — ", line)
        if not m:
            continue
        first = Path(m.group(1))
        out.add(str(first))
        out |= {str(first.parent / n) for n in re.findall(r"`([a-z_]+\.py)`", m.group(2))}
    return out


def _modules() -> set[str]:
    return {str(p.relative_to(ROOT)) for part in ("fedunlearn", "strategies", "clients")
            for p in (ROOT / part).rglob("*.py") if p.name != "__init__.py" or p.parent.name == "fedunlearn"}


def test_readme_layout_matches_the_tree() -> None:
    listed, modules = _listed(), _modules()
    assert not modules - listed, f"modules missing from README Layout: {sorted(modules - listed)}"
    assert not listed - modules, f"README Layout lists files that do not exist: {sorted(listed - modules)}"
