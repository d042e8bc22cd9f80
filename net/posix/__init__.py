"""shoal.net.posix: the network API on kernel sockets (the default stack)."""

from .. import api
from .stack import PosixConnection, PosixServer, PosixStack, PosixUdpChannel, create

api.register_stack("posix", create, description="kernel sockets, SO_REUSEPORT per shard")

__all__ = ["PosixStack", "PosixConnection", "PosixServer", "PosixUdpChannel", "create"]
