"""Opening a sandbox's files from the daemon, resolved inside the sandbox's root.

Theory of operation.  The daemon holds every capability the sandbox was denied, so a path a
sandbox chose must never be resolved the way the daemon resolves its own: a symbolic link
planted in the sandbox (``../../etc/shadow``, ``/etc/shadow``, ``/proc/self/root/...``) would
lead it to a host file.  Every lookup here is one openat2(2) from a descriptor of the
sandbox's root with ``RESOLVE_IN_ROOT`` (``..`` and absolute symlinks stop at that root,
as if the daemon were chrooted there) and ``RESOLVE_NO_MAGICLINKS`` (no /proc magic link,
which would jump anywhere).  The kernel does the whole walk at once, so a symlink swapped
between a check and a use cannot matter: there is no check apart from the use.  When a
rename races the walk the kernel answers EAGAIN and the open is tried again.

Only regular files are opened.  An existing file is first opened ``O_PATH`` (which opens no
device and blocks on no FIFO), checked with fstat, and then reopened through
``/proc/self/fd`` (the same inode, so nothing can be swapped in between); a file that does
not exist is created with ``O_EXCL`` (never through a symlink).  Read-only mounts stay
read-only: the kernel refuses the reopen for writing with EROFS.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from typing import Final

from .._errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RPCError,
    Unavailable,
)

#: The mode a file created by a write gets unless one is given.
DEFAULT_FILE_MODE: Final = 0o644

_SYS_OPENAT2: Final = 437  # the same number on every architecture
_RESOLVE_NO_MAGICLINKS: Final = 0x02
_RESOLVE_IN_ROOT: Final = 0x10
# How often an open raced by renames (EAGAIN) is tried before giving up.
_RETRIES: Final = 1000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


def openat2_in_root(root: int, path: str, flags: int, mode: int = 0) -> int:
    """openat2(``root``, ``path``) with ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS``, tried
    again while renames race it; OSError as the kernel reports it."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    name = os.fsencode(path)
    for _ in range(_RETRIES):
        fd = _libc.syscall(
            ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(root), name,
            ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)),
        )  # fmt: skip
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def open_in_root(root: int, path: str, *, write: bool, mode: int | None = None) -> int:
    """Open the regular file ``path`` inside the directory ``root`` (a descriptor), as
    :meth:`SandboxProcess.open_file` promises: a blocking, close-on-exec descriptor."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise InvalidArgument(f"path {path!r}: must be non-empty text without NUL")
    if mode is not None and not 0 <= mode <= 0o7777:
        raise InvalidArgument(f"mode {mode:#o}: must be within 0o0..0o7777")
    try:
        return _open(root, path, write, mode)
    except OSError as exc:
        raise file_error(path, exc) from None


def _open(root: int, path: str, write: bool, mode: int | None) -> int:
    for _ in range(_RETRIES):
        try:
            handle = openat2_in_root(root, path, os.O_PATH)
        except FileNotFoundError:
            if not write:
                raise
            try:
                fd = openat2_in_root(
                    root, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOCTTY, 0o600
                )
            except FileExistsError:
                _refuse_dangling_link(root, path)
                continue  # made meanwhile: look again
            os.fchmod(fd, DEFAULT_FILE_MODE if mode is None else mode)  # exact, no umask
            return fd
        try:
            kind = os.fstat(handle).st_mode
            if not stat.S_ISREG(kind):
                raise IsADirectoryError(errno.EISDIR, "") if stat.S_ISDIR(kind) else _NotRegular()
            flags = (os.O_WRONLY | os.O_TRUNC) if write else os.O_RDONLY
            # The same inode again, now really open (and EROFS on a read-only mount).
            fd = os.open(f"/proc/self/fd/{handle}", flags | os.O_CLOEXEC | os.O_NOCTTY)
        finally:
            os.close(handle)
        if write and mode is not None:
            os.fchmod(fd, mode)
        return fd
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def _refuse_dangling_link(root: int, path: str) -> None:
    """Raise ENOENT if ``path`` is a symbolic link to nothing (O_EXCL will not create its
    target, and following it would be a second lookup)."""
    try:
        link = openat2_in_root(root, path, os.O_PATH | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        if stat.S_ISLNK(os.fstat(link).st_mode):
            raise FileNotFoundError(errno.ENOENT, "a symbolic link to nothing", path)
    finally:
        os.close(link)


class _NotRegular(OSError):
    pass


def file_error(path: str, exc: OSError) -> RPCError:
    """The error a caller sees for ``exc`` from opening ``path``."""
    if isinstance(exc, _NotRegular):
        return InvalidArgument(f"{path}: not a regular file (a FIFO, socket or device)")
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(f"{path}: no such file in the sandbox")
    if code == errno.EISDIR:
        return InvalidArgument(f"{path}: is a directory")
    if code == errno.ELOOP:
        return InvalidArgument(f"{path}: too many symbolic links, or a /proc magic link")
    if code == errno.ENAMETOOLONG:
        return InvalidArgument(f"{path}: name too long")
    if code in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"{path}: permission denied")
    if code == errno.EROFS:
        return FailedPrecondition(f"{path}: on a read-only mount of the sandbox")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{path}: no space left")
    if code == errno.EAGAIN:
        return Unavailable(f"{path}: renamed too often while being opened; try again")
    return FailedPrecondition(f"{path}: {exc.strerror or exc}")
