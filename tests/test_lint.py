"""ruff and mypy are part of the test run (STYLE habit 10): a lint error fails CI like a bug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_ruff() -> None:
    p = _run("ruff", "check", "edgeproxy", "tests", "bench")
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy() -> None:
    p = _run("mypy")
    assert p.returncode == 0, p.stdout + p.stderr
