"""Binding and connecting Unix stream sockets, with stale-socket handling."""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import secrets
import socket
import stat
import struct
from typing import Final

import trio

from ..wire import Unavailable
from ._methods import PeerCredentials

_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_UCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid


class SocketInUseError(OSError):
    """A live server already listens on the socket path."""


def _probe_live(path: str) -> bool:
    """Whether something accepts connections on ``path`` (without waiting)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except BlockingIOError:
        return True  # backlog full: someone is listening
    finally:
        probe.close()
    return True


def group_id(group: int | str) -> int:
    """The gid of ``group``: a gid as it is, a group name looked up (:class:`LookupError` if
    there is no such group)."""
    if isinstance(group, int):
        if group < 0:
            raise ValueError(f"a gid cannot be negative: {group}")
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise LookupError(f"unknown group {group!r}") from None


def socket_dir_shut_to(path: str, gid: int) -> str | None:
    """The directory of the socket ``path`` if members of group ``gid`` (as such: neither its
    owner nor root) may not search it, and so cannot reach the socket; else ``None``."""
    directory = os.path.dirname(os.path.abspath(path))
    st = os.stat(directory)
    bit = stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
    return None if st.st_mode & bit else directory


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The pid, uid and gid of the process that connected ``sock`` (``SO_PEERCRED``).

    One ``getsockopt``; the kernel recorded them at ``connect`` time.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


def bind_unix(
    path: str, backlog: int = 512, *, group: int | None = None
) -> tuple[socket.socket, int]:
    """A listening socket at ``path``, mode 0600, and the inode it was created with.

    With ``group`` (a gid), the socket belongs to that group and has mode 0660 instead.  The
    socket is bound under a temporary name, restricted, then renamed into place, so it is
    never reachable with looser permissions.  A stale socket (nobody listening) is replaced;
    a live one raises :class:`SocketInUseError`; a path that is not a socket is never removed.
    """
    path = os.fspath(path)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise OSError(errno.ENAMETOOLONG, f"socket path is over {_SUN_PATH_MAX} bytes", path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(errno.EEXIST, "path exists and is not a socket", path)
        if _probe_live(path):
            raise SocketInUseError(
                errno.EADDRINUSE, "a server is already listening on this socket", path
            )
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".sbd-{secrets.token_hex(4)}.sock")
    if len(os.fsencode(tmp)) > _SUN_PATH_MAX:
        tmp = path  # no room for a temporary name: bind in place, then restrict
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(tmp)
        finally:
            os.umask(old_umask)
        os.chmod(tmp, 0o600)
        if group is not None:
            os.chown(tmp, -1, group)
            os.chmod(tmp, 0o660)
        sock.listen(backlog)
        if tmp != path:
            os.rename(tmp, path)
        sock.setblocking(False)
        inode = os.lstat(path).st_ino
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return sock, inode


def unlink_if_ours(path: str, inode: int) -> None:
    """Remove the socket file at ``path`` unless another server has replaced it."""
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


async def connect_unix(path: str) -> socket.socket:
    """A connected non-blocking socket to ``path``.

    Raises :class:`~sandboxd.Unavailable` naming the path when nobody listens there.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        try:
            sock.connect(os.fspath(path))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err), path) from None
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise Unavailable(f"cannot connect to {path}: {exc.strerror}") from None
    except OSError as exc:
        sock.close()
        raise Unavailable(f"cannot connect to {path}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    await trio.lowlevel.checkpoint()
    return sock
