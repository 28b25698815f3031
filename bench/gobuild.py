"""Building the Go ttrpc peers (bench/go, tests/go) with Debian's Go and containerd's ttrpc
library, in GOPATH mode from /usr/share/gocode: no module download, no network.

A build is cached in the temporary directory under the hash of its sources and of ``go
version``, so each program is built once per change (a build takes a few seconds).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

GOCODE: Final = "/usr/share/gocode"
INSTALL: Final = "apt-get install golang-go golang-github-containerd-ttrpc-dev"


class GoBuildFailed(Exception):
    """``go build`` failed; the message holds its output."""


def go_env(work: Path) -> dict[str, str]:
    """The environment of a GOPATH-mode build: Debian's Go sources, no proxy, no cgo."""
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",
        GOPATH=f"{work / 'gopath'}:{GOCODE}",
        GOCACHE=str(work / "gocache"),
        GOFLAGS="",
        GOPROXY="off",
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
    )
    return env


def go_build(source: Path) -> Path | str:
    """The binary built from the Go package in ``source`` (cached), or why it cannot be built
    here (Go or containerd's ttrpc library missing).  Raises :class:`GoBuildFailed` when the
    build itself fails."""
    go = shutil.which("go")
    if go is None or not os.path.isdir(f"{GOCODE}/src/github.com/containerd/ttrpc"):
        return f"Go or containerd's ttrpc library is not installed: {INSTALL}"
    work = Path(tempfile.gettempdir()) / f"sandboxd-go-{os.getuid()}"
    digest = hashlib.sha256(subprocess.run([go, "version"], capture_output=True).stdout)
    for path in sorted(source.glob("*.go")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    binary = work / f"{source.name}-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    work.mkdir(mode=0o700, exist_ok=True)
    partial = binary.with_name(f"{binary.name}.{os.getpid()}")
    done = subprocess.run(
        [go, "build", "-o", str(partial), "."],
        cwd=source,
        env=go_env(work),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise GoBuildFailed(f"go build in {source} failed:\n{done.stdout}{done.stderr}")
    partial.replace(binary)
    return binary
