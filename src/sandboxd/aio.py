"""sandboxd on asyncio: the Controller contract over a socket, without trio.

::

    async with sandboxd.aio.connect(sandboxd.default_socket_path()) as ctl:
        await ctl.create("box")

:class:`AsyncController` has the methods, models and errors of :class:`~sandboxd.RemoteController`;
importing this module does not import trio.
"""

from .api._aio import AsyncController, AsyncExec, connect

__all__ = ["AsyncController", "AsyncExec", "connect"]
