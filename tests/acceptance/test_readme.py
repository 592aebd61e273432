"""The README's "Using it" snippets, read from README.md and run with bash as a user pastes them.

Each ``bash`` block of the section runs in a fresh folder, so the test breaks when the README drifts
from the CLI. Two blocks cannot run here and are named in ``NOT_RUN`` with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## Using it"
NOT_RUN = {
    "pip install": "installs packages from the registry (this test runs offline, in the installed venv)",
    "--model my-remote": "needs an OpenAI-compatible server on 127.0.0.1:8000 and the user's catalog file",
}
"""A block holding one of these strings is not run, for the reason given."""

BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def section_blocks() -> list[str]:
    """The ``bash`` blocks of the README's "Using it" section (up to the next ``## `` heading)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    return BLOCK.findall(text[start : end if end != -1 else None])


def runnable(fragment: str) -> str:
    """The one runnable block holding ``fragment``."""
    blocks = [b for b in section_blocks() if fragment in b and not any(k in b for k in NOT_RUN)]
    assert len(blocks) == 1, f"expected one runnable block with {fragment!r}, found {len(blocks)}"
    return blocks[0]


def run_bash(block: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "200",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    env.pop("BULKINFER_MODELS", None)
    # Generous: on two busy cores the local model took 45 s; the test asserts outcomes, not time.
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_every_block_of_the_section_is_run_or_named_as_not_runnable() -> None:
    blocks = section_blocks()
    skipped = [b for b in blocks if any(k in b for k in NOT_RUN)]
    assert len(skipped) == len(NOT_RUN), "each NOT_RUN reason names exactly one block"
    assert len(blocks) - len(skipped) == 2, "the run block and the prepare block"


@pytest.mark.slow
def test_using_it_runs_as_written(tmp_path: Path) -> None:
    result = run_bash(runnable("bulkinfer run records.jsonl"), tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    job = tmp_path / "out" / "calls-nov"
    assert (job / "manifest.json.out").is_file()
    inputs = [line["recordId"] for line in read_jsonl(tmp_path / "records.jsonl")]
    lines = read_jsonl(job / "records.jsonl.out")
    assert [line["recordId"] for line in lines] == inputs
    assert all("modelOutput" in line for line in lines), lines
    assert "CALL0000002" in result.stdout  # results printed the records


def test_prepare_runs_as_written_in_the_product_catalog_example(tmp_path: Path) -> None:
    example = shutil.copytree(ROOT / "examples" / "product-catalog", tmp_path / "product-catalog")

    result = run_bash(runnable("bulkinfer prepare"), example)

    assert result.returncode == 0, result.stdout + result.stderr
    assert len(read_jsonl(example / "records.jsonl")) == 12
    assert (example / "report.json").is_file()
