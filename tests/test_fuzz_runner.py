"""The fuzzer's programs: a seed draws the same ones wherever sandboxd is installed, id reuse
comes up often enough to find a stale cache, and real processes (``process`` sandboxer) are
fuzzed, their exit statuses and signals checked."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import sandboxd

# -- seeds ------------------------------------------------------------------------------------

#: Prints the digest of the programs seed 3 draws.  The Creates carry labels drawn from a wide
#: range of integers: where Hypothesis mixes in constants found in local source files, such
#: draws are the first to change.
DIGEST_SCRIPT = """
import sys
from contextlib import asynccontextmanager

from hypothesis import strategies as st

import sandboxd
from sandboxd.backends import SimBackend
from sandboxd.testing import strategies
from sandboxd.testing.fuzz import fuzz

if len(sys.argv) > 1:
    import constants_of_mine  # the caller's own code, full of constants

@asynccontextmanager
async def controllers():
    async with sandboxd.open_controller([SimBackend()], default_sandboxer="sim") as ctl:
        yield ctl

numbers = st.lists(st.integers(0, 10**6), min_size=8, max_size=8)
create = numbers.map(
    lambda ns: {"sandboxer": "sim", "labels": {f"n{i}": str(n) for i, n in enumerate(ns)}}
)
programs = strategies.programs(1, names=("create",), create=create, max_calls=2, guided=False)
report = fuzz(controllers, seed=3, max_programs=40, duration=None, programs=programs)
assert report.ok, report.summary()
print(sandboxd.__file__)
print(report.digest)
"""


def digest_of_seed(cwd: Path, *extra: str, path: Path | None = None) -> tuple[str, str]:
    """(where sandboxd was imported from, the digest), from a fresh interpreter in ``cwd``."""
    env = {"PATH": "/usr/bin:/bin"}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    proc = subprocess.run(
        [sys.executable, "-c", DIGEST_SCRIPT, *extra],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    where, digest = proc.stdout.split()
    return where, digest


def test_a_seed_draws_the_same_programs_installed_or_from_a_source_tree(tmp_path: Path) -> None:
    source = Path(sandboxd.__file__).parent
    # Installed: a copy in a site-packages directory, which Hypothesis takes for third-party.
    installed = tmp_path / "lib" / "site-packages"
    shutil.copytree(source, installed / "sandboxd", ignore=shutil.ignore_patterns("__pycache__"))
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    (elsewhere / "constants_of_mine.py").write_text(
        "NUMBERS = [" + ", ".join(str(n) for n in range(1000, 1_000_000, 9973)) + "]\n"
    )
    from_tree = digest_of_seed(elsewhere)
    mixed = digest_of_seed(elsewhere, "import mine")
    from_wheel = digest_of_seed(elsewhere, path=installed)
    assert from_tree[0].startswith(str(source))
    assert from_wheel[0].startswith(str(installed))
    assert from_tree[1] == mixed[1] == from_wheel[1]
