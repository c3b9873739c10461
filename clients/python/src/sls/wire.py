"""The sls wire format (PROTOCOL.md): frames, the gateway's requests, and
the replies they get.

Frames are a 4-byte big-endian length and a body; a request body is
``id: u64 | op: u8 | fields``, a reply ``id: u64 | tag: u8 | fields``.
Only what a gateway sends and receives is here; any other reply tag, or a
body with bytes after its last field, is a :class:`ProtocolError`
(PROTOCOL.md, "Versioning"). ``tests/test_wire.py`` checks this module
against PROTOCOL.md's worked examples, byte for byte, as the daemon's
own tests do.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

from .errors import ProtocolError, ServerError, error_for

#: The largest reply frame accepted (the protocol's ceiling).
MAX_FRAME = 65536

# Operation codes (PROTOCOL.md, "Operations").
OP_DEVICES = 0x01
OP_CHALLENGE = 0x02
OP_VERIFY = 0x03
OP_SEND_CODE = 0x04
OP_VERIFY_CODE = 0x05
OP_CODE_STATUS = 0x06
OP_PUSH = 0x07
OP_AWAIT_PUSH = 0x08

CHANNELS = {"sms": 1, "voice": 2}
KINDS = {
    1: "dsc-plus",
    2: "scc",
    3: "online-scc",
    4: "ib-key",
    5: "sms",
    6: "temporary",
    7: "legacy-dsc",
    8: "gold",
    9: "platinum",
    10: "token",
    11: "totp-app",
}
STATUSES = {0: "active", 1: "expired", 2: "ordered", 3: "shipped", 4: "suspended", 5: "pending"}
DELIVERIES = {0: "pending", 1: "delivered", 2: "failed"}

#: ``locked_for`` and ``retry_after`` of all ones: locked until an operator unlocks.
FOREVER = 2**64 - 1


# ---------------------------------------------------------------- replies


@dataclass(frozen=True)
class Device:
    device: int
    kind: str
    label: str
    #: Seconds until the device unlocks (0: not locked; ``None``: until an
    #: operator unlocks it).
    locked_for: Optional[float]
    status: str
    #: For a shipped replacement card: when it activates (ms since the epoch).
    activates_at: Optional[int]
    #: The owner's user name for a device shared with this user; "" for the user's own.
    owner: str

    @property
    def usable(self) -> bool:
        """Active and not locked: a login may ask it."""
        return self.status == "active" and self.locked_for == 0


@dataclass(frozen=True)
class Devices:
    #: False when the user opted out of the second factor (let them in).
    required: bool
    devices: List[Device]


@dataclass(frozen=True)
class Challenge:
    challenge: int
    #: "question" (type ``question`` into the device), "positions" (the two
    #: code card positions), or "code" (type the code the device shows).
    form: str
    question: Optional[str]
    positions: Optional[Tuple[int, int]]
    expires_in: float


@dataclass(frozen=True)
class Accepted:
    user: str
    device: int
    kind: str
    accepted = True


@dataclass(frozen=True)
class Rejected:
    attempts_left: int
    accepted = False


@dataclass(frozen=True)
class Expired:
    accepted = False


@dataclass(frozen=True)
class LockedOut:
    #: Seconds; ``None``: until an operator unlocks the device.
    retry_after: Optional[float]
    accepted = False


@dataclass(frozen=True)
class UnknownChallenge:
    accepted = False


@dataclass(frozen=True)
class Denied:
    accepted = False


Verdict = Union[Accepted, Rejected, Expired, LockedOut, UnknownChallenge, Denied]


@dataclass(frozen=True)
class CodeSent:
    code: int
    expires_in: float
    resend_after: float


@dataclass(frozen=True)
class CodeStatus:
    channel: str
    sends: int
    delivery: str
    reason: str


@dataclass(frozen=True)
class PushSent:
    push: int
    #: The number the login page shows; the user chooses it on the phone.
    match_number: int
    expires_in: float


Reply = Union[Devices, Challenge, Verdict, CodeSent, CodeStatus, PushSent, ServerError]


# ---------------------------------------------------------------- encoding


def _str(value: str, field: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError(f"{field} is longer than 65535 bytes")
    return struct.pack(">H", len(data)) + data


def request(request_id: int, op: int, *fields: Union[int, str, Tuple[str, int]]) -> bytes:
    """A whole request frame. Fields: ``str`` as str, ``(\"u8\", n)`` and
    ``(\"u64\", n)`` as integers of that width."""
    body = bytearray(struct.pack(">QB", request_id, op))
    for field in fields:
        if isinstance(field, str):
            body += _str(field, "a field")
        else:
            width, number = field
            body += struct.pack(">B" if width == "u8" else ">Q", number)
    return struct.pack(">I", len(body)) + bytes(body)


def split_frame(buffer: Union[bytes, bytearray, memoryview], offset: int = 0):
    """``(body, next_offset)`` of the whole frame at ``offset``, or ``None``
    while it has not all arrived."""
    if len(buffer) - offset < 4:
        return None
    (length,) = struct.unpack_from(">I", buffer, offset)
    if length == 0 or length > MAX_FRAME:
        raise ProtocolError(f"reply frame of {length} bytes")
    end = offset + 4 + length
    if len(buffer) < end:
        return None
    return bytes(buffer[offset + 4 : end]), end


# ---------------------------------------------------------------- decoding


class _Reader:
    __slots__ = ("data", "at")

    def __init__(self, data: bytes):
        self.data = data
        self.at = 0

    def _take(self, fmt: str, size: int):
        if self.at + size > len(self.data):
            raise ProtocolError("reply body ends early")
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return value

    def u8(self) -> int:
        return self._take(">B", 1)

    def u16(self) -> int:
        return self._take(">H", 2)

    def u64(self) -> int:
        return self._take(">Q", 8)

    def str(self) -> str:
        length = self.u16()
        if self.at + length > len(self.data):
            raise ProtocolError("reply body ends early")
        raw = self.data[self.at : self.at + length]
        self.at += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ProtocolError("a reply string is not UTF-8") from error

    def seconds(self) -> float:
        return self.u64() / 1000

    def kind(self) -> str:
        code = self.u8()
        if code not in KINDS:
            raise ProtocolError(f"unknown device kind {code}")
        return KINDS[code]

    def done(self) -> None:
        if self.at != len(self.data):
            raise ProtocolError("bytes after the reply's last field")


def _until(reader: _Reader) -> Optional[float]:
    value = reader.u64()
    return None if value == FOREVER else value / 1000


def _devices(r: _Reader) -> Devices:
    required = r.u8() != 0
    devices = []
    for _ in range(r.u16()):
        device, kind, label, locked_for = r.u64(), r.kind(), r.str(), _until(r)
        status = r.u8()
        if status not in STATUSES:
            raise ProtocolError(f"unknown device status {status}")
        activates_at = r.u64() if status == 3 else None
        devices.append(Device(device, kind, label, locked_for, STATUSES[status], activates_at, r.str()))
    return Devices(required, devices)


def _challenge(r: _Reader) -> Challenge:
    challenge, form = r.u64(), r.u8()
    question = positions = None
    if form == 1:
        question, name = r.str(), "question"
    elif form == 2:
        positions, name = (r.u16(), r.u16()), "positions"
    elif form == 3:
        name = "code"
    else:
        raise ProtocolError(f"unknown challenge form {form}")
    return Challenge(challenge, name, question, positions, r.seconds())


def _verdict(r: _Reader) -> Verdict:
    code = r.u8()
    if code == 0:
        return Accepted(r.str(), r.u64(), r.kind())
    if code == 1:
        return Rejected(r.u8())
    if code == 2:
        return Expired()
    if code == 3:
        return LockedOut(_until(r))
    if code == 4:
        return UnknownChallenge()
    if code == 5:
        return Denied()
    raise ProtocolError(f"unknown verdict {code}")


def _code_status(r: _Reader) -> CodeStatus:
    channel, sends, delivery = r.u8(), r.u8(), r.u8()
    if delivery not in DELIVERIES:
        raise ProtocolError(f"unknown delivery state {delivery}")
    reason = r.str() if delivery == 2 else ""
    return CodeStatus("voice" if channel == 2 else "sms", sends, DELIVERIES[delivery], reason)


def _error(r: _Reader) -> ServerError:
    code, retry_after, message = r.u16(), r.u64(), r.str()
    return error_for(code, message, retry_after / 1000)


_DECODERS = {
    0x01: _devices,
    0x02: _challenge,
    0x03: _verdict,
    0x04: lambda r: CodeSent(r.u64(), r.seconds(), r.seconds()),
    0x06: _code_status,
    0x07: lambda r: PushSent(r.u64(), r.u8(), r.seconds()),
    0x7F: _error,
}


def reply(body: bytes) -> Tuple[int, Reply]:
    """``(request id, reply)`` of a reply body."""
    r = _Reader(body)
    request_id, tag = r.u64(), r.u8()
    decode = _DECODERS.get(tag)
    if decode is None:
        raise ProtocolError(f"reply tag 0x{tag:02x} does not answer a gateway's request")
    value = decode(r)
    r.done()
    return request_id, value
