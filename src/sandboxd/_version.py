__version__ = "0.1.0"

#: The wire protocol version spoken by this build (see PROTOCOL.md).
PROTOCOL_VERSION = 1
