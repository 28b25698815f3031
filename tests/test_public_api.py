"""The package root exports exactly what the README says is public."""

from __future__ import annotations

import re
from pathlib import Path

import sandboxd

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def documented_names() -> set[str]:
    match = re.search(
        r"<!-- public-api:begin -->\n(.*?)<!-- public-api:end -->", README, flags=re.S
    )
    assert match is not None, "README lost its public-API markers"
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", match.group(1)))


def test_the_root_exports_what_the_readme_lists() -> None:
    assert set(sandboxd.__all__) == documented_names()


def test_every_exported_name_exists() -> None:
    missing = [name for name in sandboxd.__all__ if not hasattr(sandboxd, name)]
    assert missing == []
