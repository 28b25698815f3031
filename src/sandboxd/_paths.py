"""Where the daemon listens and keeps its state, unless told otherwise."""

from __future__ import annotations

import os
import stat


def default_socket_path() -> str:
    """``$SANDBOXD_SOCKET``, else ``$XDG_RUNTIME_DIR/sandboxd/sandboxd.sock``, else
    ``/run/sandboxd/sandboxd.sock`` for root, else ``<tmp>/sandboxd-<uid>/sandboxd.sock``."""
    env = os.environ.get("SANDBOXD_SOCKET")
    if env:
        return env
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return os.path.join(runtime_dir, "sandboxd", "sandboxd.sock")
    if os.geteuid() == 0:
        return "/run/sandboxd/sandboxd.sock"
    import tempfile  # only here: it costs a short-lived client (sandboxctl) milliseconds

    return os.path.join(tempfile.gettempdir(), f"sandboxd-{os.getuid()}", "sandboxd.sock")


def default_state_dir() -> str:
    """``$SANDBOXD_STATE_DIR``, else ``/var/lib/sandboxd`` for root, else
    ``$XDG_STATE_HOME/sandboxd`` (``~/.local/state/sandboxd``)."""
    env = os.environ.get("SANDBOXD_STATE_DIR")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/sandboxd"
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state_home, "sandboxd")


def ensure_private_dir(path: str) -> None:
    """Create ``path`` (and parents) with mode 0700 if missing.

    An existing directory must belong to this user and be writable by nobody else, or a
    :class:`PermissionError` says why: another user must not be able to swap the socket.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(path)
    if st.st_uid != os.geteuid():
        raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o022:
        raise PermissionError(f"{path} is writable by others (mode {st.st_mode & 0o777:o})")
