"""Every code block of README.md and docs/*.md runs as written.

Each file's blocks run in order in a fresh working directory, the ``python`` blocks in one
shared namespace (as a reader pastes them into one session) and the ``bash`` blocks in a shell
whose PATH starts with this interpreter's scripts (the installed ``ibframe``). ``toml`` blocks
must parse; ``text`` blocks are listings. A block is left out only when the line before its
fence says why: ``<!-- docs-test: skip: REASON -->``. ``../shared/data`` next to the working
directory leads to the real SZT data of ``IBFRAME_TEST_DATA``, as it does from a checkout beside
the shared data.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
import types
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "bash", "toml", "text"}
SLOW = {"recording.md", "sp-estimator.md"}  # they train networks

_FENCE = re.compile(r"^```(\S*)\s*$")
_SKIP = re.compile(r"^<!-- docs-test: skip: (.+\S) -->$")


@dataclasses.dataclass(frozen=True)
class CodeBlock:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    skip: str | None  # the reason it is not run

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[CodeBlock]:
    """The fenced blocks of a Markdown file, with their language and skip reason."""
    lines = path.read_text().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i
        i += 1
        while not lines[i].startswith("```"):
            i += 1
        skip = _SKIP.match(lines[start - 1]) if start else None
        blocks.append(CodeBlock(path, start + 1, match.group(1), "\n".join(lines[start + 1 : i]) + "\n",
                                skip.group(1) if skip else None))
        i += 1
    return blocks


def run_blocks(blocks: list[CodeBlock], workdir: Path) -> None:
    """Run the blocks in order in ``workdir``, as a reader would."""
    module = types.ModuleType("docs_session")  # dataclasses look their module up in sys.modules
    sys.modules[module.__name__] = module
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MPLBACKEND": "Agg"}
    try:
        for block in blocks:
            if block.skip is not None or block.language == "text":
                continue
            if block.language == "toml":
                tomllib.loads(block.code)
            elif block.language == "python":
                with warnings.catch_warnings():
                    warnings.simplefilter("default")  # a reader sees warnings; they do not fail
                    exec(compile(block.code, block.where, "exec"), module.__dict__)  # noqa: S102
            elif block.language == "bash":
                done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=workdir,
                                      env=env, capture_output=True, text=True, timeout=900,
                                      check=False)
                assert done.returncode == 0, f"{block.where} failed:\n{done.stdout}\n{done.stderr}"
    finally:
        del sys.modules[module.__name__]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory, with ``../shared/data`` leading to the real SZT data if set."""
    import matplotlib

    matplotlib.use("Agg")
    work = tmp_path / "work"
    work.mkdir()
    data = os.environ.get("IBFRAME_TEST_DATA")
    if data:
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "data").symlink_to(Path(data).resolve())
    monkeypatch.chdir(work)
    yield work
    import matplotlib.pyplot as plt

    plt.close("all")


def test_every_block_has_a_language_and_every_skip_a_reason():
    for path in DOCUMENTS:
        for block in code_blocks(path):
            assert block.language in LANGUAGES, f"{block.where}: say what the block holds"
            if block.skip is not None:
                assert block.language in ("bash", "python"), block.where


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in SLOW else [])
     for p in DOCUMENTS],
)
def test_snippets_run_as_written(path, workdir):
    blocks = code_blocks(path)
    if any("../shared/data" in b.code for b in blocks if b.skip is None) and not (
        workdir.parent / "shared" / "data" / "var_u.mat"
    ).exists():
        pytest.skip("IBFRAME_TEST_DATA is not set: a snippet reads the real SZT data")
    run_blocks(blocks, workdir)


def test_readme_snippet_runs_with_one_epoch(workdir):
    """Its last line failed ('No numeric data to plot') when the run held one epoch."""
    (block,) = [b for b in code_blocks(ROOT / "README.md") if b.language == "python"]
    assert "range(3)" in block.code
    one_epoch = dataclasses.replace(block, code=block.code.replace("range(3)", "range(1)"))
    run_blocks([one_epoch], workdir)
