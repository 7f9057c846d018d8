"""Error types of the codec: the peer's fault, never ours.

Connection code closes the offending connection on `ProtocolError` and keeps every other
connection running; any other exception escaping the codec is a bug in the proxy.
"""


class ProtocolError(ValueError):
    """The peer sent bytes that are not valid Kafka protocol."""


class FrameTooLarge(ProtocolError):
    """A frame announced a size above the configured maximum (or a negative one)."""
