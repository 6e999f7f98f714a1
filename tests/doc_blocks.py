"""The command and Python blocks of the README and of docs/*.md, as the tests that run or check them read them."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))


@dataclass(frozen=True)
class Block:
    """One fenced block: the page it is on, its language (``bash``, ``python``) and its text."""

    page: Path
    language: str
    text: str

    @property
    def name(self) -> str:
        return str(self.page.relative_to(ROOT))


def blocks(language: str) -> list[Block]:
    """Every block of ``language`` on every page, in page order."""
    found = []
    for page in PAGES:
        for lang, text in re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.S | re.M):
            if lang == language:
                found.append(Block(page, lang, text))
    return found


def block(language: str, containing: str) -> Block:
    """The one block of ``language`` that contains ``containing`` (a test names the example it runs this way)."""
    matches = [b for b in blocks(language) if containing in b.text]
    assert len(matches) == 1, f"{len(matches)} {language} blocks contain {containing!r}: {[b.name for b in matches]}"
    return matches[0]


def run_python_block(containing: str, folder: Path, monkeypatch, capsys) -> str:
    """Run the Python example that contains ``containing`` in ``folder``, as a reader would; what it printed."""
    example = block("python", containing)
    monkeypatch.chdir(folder)
    exec(compile(example.text, example.name, "exec"), {})
    return capsys.readouterr().out


def commands(example: Block) -> list[list[str]]:
    """A bash block's commands as a shell splits them: continuation lines joined, comments dropped."""
    joined = example.text.replace("\\\n", " ")
    return [argv for argv in (shlex.split(line, comments=True) for line in joined.splitlines()) if argv]


def all_commands() -> list[tuple[Block, list[str]]]:
    """Every command of every bash block, with the block it is in."""
    return [(b, argv) for b in blocks("bash") for argv in commands(b)]
