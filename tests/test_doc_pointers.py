"""Every README a project file points to exists, with the section it names."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from search import data, fake_data, run, submit, train
from search.errors import UsageError

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


def readme_commands() -> list[list[str]]:
    """Every shell command in the README's bash blocks, as words: continuation lines joined, comments dropped,
    `a && b` and `a; b` split."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    commands, pending = [], ""
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        try:
            words, pending = shlex.split(pending + line, comments=True), ""
        except ValueError:  # a quoted string that goes on over the next lines (a `python -c '...'`)
            pending += line + "\n"
            continue
        while words:
            cut = next((i for i, w in enumerate(words) if w in ("&&", ";", "|")), len(words))
            commands.append(words[:cut])
            words = words[cut + 1 :]
    return commands


def search_run_argv(words: list[str]) -> list[str] | None:
    """The `python -m search.run` arguments a README command passes, however it passes them (directly, through
    `make search ARGS=...`, `sbatch cluster/slurm.sbatch` or `search.submit`); None for other commands."""
    if "search.run" in words:
        return words[words.index("search.run") + 1 :]
    if "cluster/slurm.sbatch" in words:
        return words[words.index("cluster/slurm.sbatch") + 1 :]
    if words[:2] == ["make", "search"]:
        space = [w.split("=", 1)[1] for w in words if w.startswith("SPACE=")] or ["spaces/vgg_cifar100.py"]
        return space + [a for w in words if w.startswith("ARGS=") for a in shlex.split(w.split("=", 1)[1])]
    if "search.submit" in words and words[words.index("search.submit") + 1] not in ("status", "logs", "stop"):
        _, rest = submit._parser(commands=False).parse_known_args(words[words.index("search.submit") + 1 :])
        return rest
    return None


def test_every_readme_command_line_uses_options_its_command_has():
    """A renamed or dropped flag fails here, not in a reader's terminal."""
    checked = 0
    for words in readme_commands():
        argv = search_run_argv(words)
        parser = run._parser() if argv is not None else None
        for module, cli_parser in (("search.train", train._parser), ("search.fake_data", fake_data._parser),
                                   ("search.data", data._parser)):  # fmt: skip
            if module in words:
                argv, parser = words[words.index(module) + 1 :], cli_parser()
        if parser is None:
            continue
        try:
            parser.parse_args(argv)
        except (SystemExit, UsageError) as exc:
            raise AssertionError(f"README: {shlex.join(words)}\n  {exc}") from None
        checked += 1
    assert checked >= 10, checked  # the blocks were found
