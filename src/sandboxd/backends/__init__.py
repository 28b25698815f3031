"""How sandboxes really run: the backend interface and the backends that implement it.

- :class:`ProcessBackend` (``"process"``): host processes, each sandbox a process group.
- :class:`SimBackend` (``"sim"``): simulated processes, for fuzzing lifecycle orderings.
"""

from ._base import Backend, ExitCallback, SandboxProcess
from ._platform import host_platform
from ._process import ProcessBackend
from ._sim import SimBackend

__all__ = [
    "Backend",
    "ExitCallback",
    "ProcessBackend",
    "SandboxProcess",
    "SimBackend",
    "host_platform",
]
