"""The README and docs/ point at files that exist: every relative link, and every results
folder or file under benchmarks/results/ they quote a figure from; the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _targets(page: Path):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"^[a-z]+:", target):
            yield (page.parent / target).resolve(), target
    for quoted in re.findall(r"benchmarks/results/[\w./{},-]*[\w}]", text):
        for name in _expand(quoted):
            yield ROOT / name, quoted


def _expand(path: str) -> list[str]:
    """`demo_quality_{bf16,int8}/` -> both folders."""
    match = re.search(r"\{([^}]*)\}", path)
    if not match:
        return [path]
    return [
        path[: match.start()] + part + path[match.end() :] for part in match.group(1).split(",")
    ]


def test_every_link_and_quoted_results_file_exists():
    missing = [
        f"{page.relative_to(ROOT)}: {quoted}"
        for page in PAGES
        for path, quoted in _targets(page)
        if not path.exists()
    ]
    assert not missing, missing


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 260
