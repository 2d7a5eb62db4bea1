"""Every README a project file points to exists, with the section it names."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted({*ROOT.glob("cluster/*"), *ROOT.glob("search/*.py"), *ROOT.glob("bench/*.py"),
                *ROOT.glob("spaces/*.py"), ROOT / "Makefile", ROOT / "pyproject.toml"})  # fmt: skip


def headings(readme: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in readme.read_text().splitlines() if line.startswith("#")}


def test_every_readme_a_project_file_points_to_exists_with_the_section_it_names():
    pointers = [(f, m) for f in FILES for m in re.finditer(r'([\w./-]*README\.md)(?:, "([^"]+)")?', f.read_text())]
    assert any(f.name == "rayjob.yaml" for f, _ in pointers)  # the manifest's pointer is among them
    for file, match in pointers:
        readme = ROOT / match[1]  # project-relative, as the files write them
        assert readme.is_file(), f"{file.relative_to(ROOT)} points to {match[1]}, which does not exist"
        if match[2]:
            assert match[2] in headings(readme), f"{file.relative_to(ROOT)}: no section {match[2]!r} in {match[1]}"
