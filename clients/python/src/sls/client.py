"""Clients of the sls daemon for login gateways: :class:`AsyncClient`
(asyncio) and :class:`Client` (blocking, usable from many threads).

Both speak the protocol over its TCP/TLS transport (PROTOCOL.md, "TCP/TLS
fallback": the same frames as QUIC, one stream per connection) with the
standard library's ``ssl``: nothing to compile, nothing else to install.
Every call is pipelined on one connection — concurrent calls share it,
each paired with its reply by request id, and the requests of one event
loop turn leave in one write.

Retries follow PROTOCOL.md ("Requests and retries"): an error reply that
says nothing was changed (``Busy``, ``RateLimited``, ``StoreUnavailable``,
``ShuttingDown``, ``Internal``, ``TooManyChallenges``) is sent again, at
most ``retries`` times and only when its ``retry_after`` is at most
``max_retry_wait`` (a per-user limit of minutes is the caller's to show);
``ShuttingDown`` moves to the next node first. A lost connection fails the
calls in flight with :class:`ConnectionLost` — except ``devices``, which
changes nothing and is sent again — and the next call connects again,
trying the nodes in turn.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

from . import wire
from .errors import ConnectionLost, ProtocolError, ServerError, ShuttingDown, SlsError, Unavailable
from .wire import Challenge, CodeSent, CodeStatus, Devices, PushSent, Verdict

Node = Union[str, Tuple[str, int]]

_VERDICTS = (
    wire.Accepted,
    wire.Rejected,
    wire.Expired,
    wire.LockedOut,
    wire.UnknownChallenge,
    wire.Denied,
)


def tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.3, the deployment's CA, the gateway's certificate, ALPN
    ``sls/1``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=ca)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["sls/1"])
    return context


def _address(node: Node) -> Tuple[str, int]:
    if isinstance(node, tuple):
        return node
    host, _, port = node.rpartition(":")
    return host.strip("[]"), int(port)


class _Connection(asyncio.Protocol):
    """One TLS connection: requests out, replies routed back by id."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = bytearray()
        self.waiting: Dict[int, asyncio.Future] = {}
        self.next_id = 1
        self.out = bytearray()
        self.flushing = False
        self.closed = False
        #: Done once the connection is gone (its TLS close finished).
        self.ended = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A daemon that vanished is noticed; asyncio already sets
            # TCP_NODELAY (frames are small).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        offset = 0
        try:
            while True:
                frame = wire.split_frame(self.buffer, offset)
                if frame is None:
                    break
                body, offset = frame
                request_id, reply = wire.reply(body)
                waiter = self.waiting.pop(request_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
        except ProtocolError as error:
            self.fail(error)
            if self.transport is not None:
                self.transport.abort()
            return
        del self.buffer[:offset]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.fail(ConnectionLost(f"the connection ended: {exc or 'closed by the server'}"))
        if not self.ended.done():
            self.ended.set_result(None)

    def fail(self, error: SlsError) -> None:
        self.closed = True
        waiting, self.waiting = self.waiting, {}
        for waiter in waiting.values():
            if not waiter.done():
                waiter.set_exception(error)

    def send(self, op: int, fields: Sequence) -> asyncio.Future:
        request_id = self.next_id
        self.next_id += 1
        self.out += wire.request(request_id, op, *fields)
        if not self.flushing:
            # Every request of this loop turn leaves in one write.
            self.flushing = True
            asyncio.get_running_loop().call_soon(self.flush)
        waiter = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = waiter
        return waiter

    def flush(self) -> None:
        self.flushing = False
        if self.out and self.transport is not None and not self.closed:
            self.transport.write(bytes(self.out))
        self.out.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class AsyncClient:
    """A gateway's client, for asyncio code.

    ``nodes``: the daemons' TCP/TLS addresses (``server.tcp-listen``),
    ``"host:port"`` or ``(host, port)``, tried in turn. ``ca``, ``cert``,
    ``key``: PEM files — the deployment's CA and this gateway's certificate
    (``slsd cert issue --role gateway --name NAME``). ``server_name``: the
    name the daemons' certificate carries (``server.name``).
    """

    def __init__(
        self,
        nodes: Union[Node, Iterable[Node]],
        *,
        ca: str,
        cert: str,
        key: str,
        server_name: str = "localhost",
        connect_timeout: float = 3.0,
        timeout: float = 10.0,
        retries: int = 2,
        max_retry_wait: float = 1.0,
        max_in_flight: int = 4096,
    ) -> None:
        if isinstance(nodes, (str, tuple)):
            nodes = [nodes]
        self.nodes: List[Tuple[str, int]] = [_address(node) for node in nodes]
        if not self.nodes:
            raise ValueError("no node to connect to")
        self.tls = tls_context(ca, cert, key)
        self.server_name = server_name
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.max_in_flight = max_in_flight
        self._node = 0
        self._connection: Optional[_Connection] = None
        self._connecting: Optional[asyncio.Lock] = None
        self._slots: Optional[asyncio.Semaphore] = None

    # ---------------------------------------------------------- the calls

    async def devices(self, user: str) -> Devices:
        """The user's devices, in the order a login offers them."""
        return await self._call(Devices, wire.OP_DEVICES, [user], idempotent=True)

    async def challenge(self, user: str, device: int) -> Challenge:
        """A challenge for one of the user's devices."""
        return await self._call(Challenge, wire.OP_CHALLENGE, [user, ("u64", device)])

    async def verify(self, challenge: int, response: str) -> Verdict:
        """The verdict on the answer to a challenge."""
        return await self._call(_VERDICTS, wire.OP_VERIFY, [("u64", challenge), response])

    async def send_code(self, user: str, channel: str = "sms") -> CodeSent:
        """Sends a code to the user's verified number ("sms" or "voice")."""
        fields = [user, ("u8", wire.CHANNELS[channel])]
        return await self._call(CodeSent, wire.OP_SEND_CODE, fields)

    async def verify_code(self, user: str, code: str) -> Verdict:
        """The verdict on a code the user received."""
        return await self._call(_VERDICTS, wire.OP_VERIFY_CODE, [user, code])

    async def code_status(self, code: int) -> CodeStatus:
        """How the delivery of a sent code goes."""
        return await self._call(CodeStatus, wire.OP_CODE_STATUS, [("u64", code)], idempotent=True)

    async def push(self, user: str, device: int) -> PushSent:
        """A push to the user's IB Key app; show ``match_number``."""
        return await self._call(PushSent, wire.OP_PUSH, [user, ("u64", device)])

    async def await_push(self, push: int, timeout: float = 90.0) -> Verdict:
        """Waits for the phone's answer (or the push's expiry)."""
        return await self._call(_VERDICTS, wire.OP_AWAIT_PUSH, [("u64", push)], timeout=timeout)

    async def close(self) -> None:
        """Closes the connection (TLS close_notify), waiting a moment for it."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        connection.close()
        try:
            await asyncio.wait_for(asyncio.shield(connection.ended), 1.0)
        except asyncio.TimeoutError:
            if connection.transport is not None:
                connection.transport.abort()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # ---------------------------------------------------------- machinery

    async def _call(
        self,
        expected: Union[Type, Tuple[Type, ...]],
        op: int,
        fields: Sequence,
        idempotent: bool = False,
        timeout: Optional[float] = None,
    ):
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
        attempt = 0
        while True:
            connection = await self._connect()
            async with self._slots:
                waiter = connection.send(op, fields)
                try:
                    reply = await asyncio.wait_for(waiter, timeout or self.timeout)
                except ConnectionLost:
                    self._forget(connection)
                    if idempotent and attempt < self.retries:
                        attempt += 1
                        continue
                    raise
                except asyncio.TimeoutError:
                    # A node that does not answer in time is left for the next.
                    self._forget(connection, move_on=True)
                    raise ConnectionLost(f"no reply within {timeout or self.timeout} s") from None
            if isinstance(reply, ServerError):
                if reply.retryable and attempt < self.retries and reply.retry_after <= self.max_retry_wait:
                    attempt += 1
                    if isinstance(reply, ShuttingDown):
                        self._forget(connection, move_on=True)
                    await asyncio.sleep(reply.retry_after)
                    continue
                raise reply
            if not isinstance(reply, expected):
                self._forget(connection)
                raise ProtocolError(f"{type(reply).__name__} does not answer operation 0x{op:02x}")
            return reply

    def _forget(self, connection: _Connection, move_on: bool = False) -> None:
        if self._connection is connection:
            self._connection = None
            if move_on:
                self._node += 1
        connection.close()

    async def _connect(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            connection = self._connection
            if connection is not None and not connection.closed:
                return connection
            failures = []
            loop = asyncio.get_running_loop()
            for turn in range(len(self.nodes)):
                index = (self._node + turn) % len(self.nodes)
                host, port = self.nodes[index]
                try:
                    _, connection = await asyncio.wait_for(
                        loop.create_connection(
                            _Connection, host, port, ssl=self.tls, server_hostname=self.server_name
                        ),
                        self.connect_timeout,
                    )
                except (OSError, asyncio.TimeoutError, ssl.SSLError) as error:
                    failures.append(f"{host}:{port}: {error or 'no answer in time'}")
                    continue
                chosen = connection.transport.get_extra_info("ssl_object").selected_alpn_protocol()
                if chosen != "sls/1":
                    connection.close()
                    failures.append(f"{host}:{port}: no sls/1 ALPN")
                    continue
                self._node = index
                self._connection = connection
                return connection
            raise Unavailable("no sls node answered: " + "; ".join(failures))


class Client:
    """The blocking client: the same calls as :class:`AsyncClient`, on an
    event loop of its own in a background thread. Safe to share between
    threads; their calls are pipelined on one connection."""

    def __init__(self, nodes: Union[Node, Iterable[Node]], **options) -> None:
        self._client = AsyncClient(nodes, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sls-client", daemon=True)
        self._thread.start()

    def _run(self, call):
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    def devices(self, user: str) -> Devices:
        return self._run(self._client.devices(user))

    def challenge(self, user: str, device: int) -> Challenge:
        return self._run(self._client.challenge(user, device))

    def verify(self, challenge: int, response: str) -> Verdict:
        return self._run(self._client.verify(challenge, response))

    def send_code(self, user: str, channel: str = "sms") -> CodeSent:
        return self._run(self._client.send_code(user, channel))

    def verify_code(self, user: str, code: str) -> Verdict:
        return self._run(self._client.verify_code(user, code))

    def code_status(self, code: int) -> CodeStatus:
        return self._run(self._client.code_status(code))

    def push(self, user: str, device: int) -> PushSent:
        return self._run(self._client.push(user, device))

    def await_push(self, push: int, timeout: float = 90.0) -> Verdict:
        return self._run(self._client.await_push(push, timeout))

    def close(self) -> None:
        if self._thread.is_alive():
            self._run(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
