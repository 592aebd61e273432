"""The tests that drive our server with the openai and anthropic SDKs, run again under the older major
line of each SDK (issue 12: the newest release and one older line must both work).

``scripts/setup test`` installs the older SDKs into a folder of their own (``.venv/sdk-old``); here the
marked tests run in a subprocess with that folder first on ``PYTHONPATH``, so it shadows the venv's newer
SDKs, and with ``BULKINFER_OLDER_SDKS=1``, which makes ``tests/conftest.py`` check that the SDKs imported
really are the older ones. Only the tests marked ``sdk_compat`` run again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
OLDER_SDKS = Path(os.environ.get("BULKINFER_OLDER_SDKS_DIR") or Path(sys.prefix) / "sdk-old")
"""Where ``scripts/setup test`` puts the older SDKs: beside the venv's own packages."""
MARKER = "pytest.mark.sdk_" + "compat"  # (spelt in two so this module is never found by its own scan)
"""On a test (``@pytest.mark...``) or on a whole module (``pytestmark = pytest.mark...``)."""


def marked_modules() -> list[Path]:
    """The test modules holding at least one ``sdk_compat`` test, found by their text so that a new one
    is picked up without a list to keep."""
    here = Path(__file__).resolve()
    found = (p for p in (ROOT / "tests").rglob("test_*.py") if p.resolve() != here)
    return sorted(p for p in found if MARKER in p.read_text(encoding="utf-8"))


def test_marked_tests_pass_under_the_older_sdks() -> None:
    assert (OLDER_SDKS / "openai").is_dir() and (OLDER_SDKS / "anthropic").is_dir(), (
        f"the older openai and anthropic SDKs are not in {OLDER_SDKS}: run scripts/setup test"
    )
    modules = marked_modules()
    assert modules, f"no test module under tests/ has {MARKER}"
    path = [str(OLDER_SDKS), str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "BULKINFER_OLDER_SDKS": "1"}
    # the SDKs' side of the wire is the same whatever the server stores its jobs in: SQLite only
    env.pop("BULKINFER_TEST_POSTGRES_URL", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "sdk_compat"]
    run = subprocess.run(
        [*command, *(str(m.relative_to(ROOT)) for m in modules)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    passed = re.search(r"(\d+) passed", output)
    assert passed is not None and int(passed[1]) >= 1, output[-3000:]
