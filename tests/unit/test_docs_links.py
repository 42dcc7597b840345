"""The docs point only at files inside the repository, and those files exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# Markdown link targets, and code spans that look like a relative path.
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
RELATIVE = re.compile(r"`(\.\.?/[^`\s]+)`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_local_references_stay_in_the_repository(doc: Path) -> None:
    """Every relative link or ./, ../ path resolves to an existing file of the repository."""
    text = doc.read_text(encoding="utf-8")
    targets = [t for t in LINK.findall(text) if "://" not in t and not t.startswith("mailto:")]
    targets += RELATIVE.findall(text)
    bad = []
    for target in targets:
        resolved = (doc.parent / target).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            bad.append(target)
    assert bad == []
