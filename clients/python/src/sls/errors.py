"""What can go wrong, typed: the server's error replies (PROTOCOL.md,
"Error codes") and the client's own failures."""

from __future__ import annotations

from typing import Dict, Type


class SlsError(Exception):
    """Anything this package raises."""


class Unavailable(SlsError):
    """No node could be reached (or none answered in time). Nothing was
    sent: the second factor fails closed — refuse the login for now."""


class ConnectionLost(SlsError):
    """The connection ended while the request was in flight: it is unknown
    whether the server carried it out. For a ``verify``, start the login
    over with a new challenge (PROTOCOL.md, "A retried Verify")."""


class ProtocolError(SlsError):
    """The server sent something PROTOCOL.md does not allow; the
    connection is closed."""


class ServerError(SlsError):
    """An ``Error`` reply. ``retry_after`` is in seconds (0: not said)."""

    code = 0
    #: Safe to send again as it is: the server changed nothing.
    retryable = False

    def __init__(self, message: str = "", retry_after: float = 0.0, code: int = 0):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        if code:
            self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, retry_after={self.retry_after})"


def _error(name: str, code: int, retryable: bool = False, doc: str = "") -> Type[ServerError]:
    return type(name, (ServerError,), {"code": code, "retryable": retryable, "__doc__": doc})


Malformed = _error("Malformed", 1, doc="The request did not parse (a bug in the caller).")
UnknownOperation = _error("UnknownOperation", 2)
Forbidden = _error("Forbidden", 3, doc="The certificate's role may not call this operation.")
Busy = _error("Busy", 4, True, "Overloaded: retry after retry_after.")
TooManyChallenges = _error("TooManyChallenges", 5, True)
RateLimited = _error("RateLimited", 6, True, "Too many requests from this client or for this user.")
NotFound = _error("NotFound", 7, doc="No such device for this user, or it cannot be asked.")
InvalidArgument = _error("InvalidArgument", 8)
Internal = _error("Internal", 9, True, "The server failed; nothing was changed.")
ShuttingDown = _error("ShuttingDown", 10, True, "The node is stopping: try another node.")
NoVerifiedNumber = _error("NoVerifiedNumber", 11)
DeliveryUnavailable = _error("DeliveryUnavailable", 12, doc="No carrier bridge: nothing was sent.")
PhoneUnreachable = _error("PhoneUnreachable", 13, doc="The phone is not connected: use a challenge.")
StoreUnavailable = _error("StoreUnavailable", 14, True, "The shared store did not answer in time.")
Unsupported = _error("Unsupported", 15)

_BY_CODE: Dict[int, Type[ServerError]] = {
    cls.code: cls
    for cls in (
        Malformed,
        UnknownOperation,
        Forbidden,
        Busy,
        TooManyChallenges,
        RateLimited,
        NotFound,
        InvalidArgument,
        Internal,
        ShuttingDown,
        NoVerifiedNumber,
        DeliveryUnavailable,
        PhoneUnreachable,
        StoreUnavailable,
        Unsupported,
    )
}


def error_for(code: int, message: str, retry_after: float) -> ServerError:
    """The typed error of an ``Error`` reply (a code this version does not
    know is a plain :class:`ServerError` carrying it)."""
    cls = _BY_CODE.get(code, ServerError)
    return cls(message, retry_after, code)
