"""tools/demo, the README's first command, does what it says: a real sandbox's whole life."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_drives_a_real_sandbox_through_its_life() -> None:
    # tools/demo only sets up .venv and runs this script with it; the tests run in that venv.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    steps = [line for line in lines if line.startswith(("ok ", "FAIL"))]
    assert len(steps) == 10
    assert all(line.startswith("ok ") for line in steps)
    assert "round trip" in steps[0]
    assert lines[-1] == "demo: daemon stopped (exit 0); every step did what it should"
