"""The platform of the host, named as Go and OCI image indexes name it."""

from __future__ import annotations

import functools
import platform as _stdlib_platform
from typing import Final

from .._models import Platform

# uname machine -> (GOARCH, variant), as containerd's platforms.Normalize names them.  A
# machine not listed is reported as uname says it, lower-cased, with no variant.
_ARCHITECTURES: Final[dict[str, tuple[str, str]]] = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "loongarch64": ("loong64", ""),
    "mips64": ("mips64", ""),
}


@functools.cache
def host_platform() -> Platform:
    """The platform of this host (computed once): os ``"linux"``, architecture ``"amd64"``,
    ``"arm64"`` (variant ``"v8"``), ``"arm"`` (variant ``"v7"``, ...), ``"386"``, ..."""
    machine = _stdlib_platform.machine().lower()
    architecture, variant = _ARCHITECTURES.get(machine, (machine, ""))
    return Platform(_stdlib_platform.system().lower(), architecture, variant)
