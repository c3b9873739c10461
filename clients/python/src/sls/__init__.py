"""The sls client for login gateways: verify second factors with an sls
daemon over TLS (PROTOCOL.md).

    import sls
    with sls.Client("sls.example:4434", ca="ca.pem", cert="gw.pem", key="gw.key",
                    server_name="sls.example") as client:
        devices = client.devices("jdoe")
"""

from .client import AsyncClient, Client, tls_context
from .errors import (
    Busy,
    ConnectionLost,
    DeliveryUnavailable,
    Forbidden,
    Internal,
    InvalidArgument,
    Malformed,
    NoVerifiedNumber,
    NotFound,
    PhoneUnreachable,
    ProtocolError,
    RateLimited,
    ServerError,
    ShuttingDown,
    SlsError,
    StoreUnavailable,
    TooManyChallenges,
    Unavailable,
    UnknownOperation,
    Unsupported,
)
from .wire import (
    Accepted,
    Challenge,
    CodeSent,
    CodeStatus,
    Denied,
    Device,
    Devices,
    Expired,
    LockedOut,
    PushSent,
    Rejected,
    UnknownChallenge,
    Verdict,
)

__all__ = [name for name in dir() if not name.startswith("_")]
__version__ = "0.1.0"
