"""How sandboxes really run: the backend interface and the backends that implement it.

- :class:`ProcessBackend` (``"process"``): host processes, each sandbox a process group.
- :class:`BwrapBackend` (``"bwrap"``): real isolation in Linux namespaces, by bubblewrap.
- :class:`SimBackend` (``"sim"``): simulated processes, for fuzzing lifecycle orderings.
- :class:`CgroupBackend`: ``process`` or ``bwrap`` with a cgroup per sandbox (limits,
  counters, teardown); :func:`detect_cgroups` finds the hierarchy.
"""

from ._base import (
    EXIT_UNKNOWN,
    Backend,
    ExecProcess,
    ExecSpec,
    ExitCallback,
    SandboxProcess,
    SpawnCallback,
)
from ._bwrap import BwrapBackend
from ._cgroups import (
    CgroupBackend,
    CgroupManager,
    CgroupUsage,
    cgroup_counters,
    detect_cgroups,
    exit_reason,
    parent_name,
    probe_cgroups,
    with_cgroups,
)
from ._platform import host_platform
from ._process import DEFAULT_PATH, ProcessBackend
from ._sim import SimBackend

__all__ = [
    "DEFAULT_PATH",
    "EXIT_UNKNOWN",
    "Backend",
    "BwrapBackend",
    "CgroupBackend",
    "CgroupManager",
    "CgroupUsage",
    "ExecProcess",
    "ExecSpec",
    "ExitCallback",
    "ProcessBackend",
    "SandboxProcess",
    "SimBackend",
    "SpawnCallback",
    "cgroup_counters",
    "detect_cgroups",
    "exit_reason",
    "host_platform",
    "parent_name",
    "probe_cgroups",
    "with_cgroups",
]
