"""The package against a real daemon over TCP/TLS: logins with a DSC+
card and a security code card answered by the simulator's emulated
devices, wrong answers and lockout, typed errors, pipelining, the
blocking client from many threads, failover between nodes and
reconnection after a restart."""

import asyncio
import concurrent.futures
import socket
import unittest

import sls
from daemon import Daemon, token

DSC_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
CARD_KEY = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
CONFIG = '[lockout]\nfailures = 3\nfirst = "60s"\n[challenges]\nper-user-per-minute = 1000\n'


def setUpModule():
    global daemon
    daemon = Daemon(CONFIG)
    daemon.admin("enroll", "gina", "dsc-plus", "--secret", DSC_KEY, "--pin", "1234", "--label", "blue")
    daemon.admin("enroll", "hugo", "scc", "--secret", CARD_KEY)
    daemon.admin("enroll", "lock", "dsc-plus", "--secret", DSC_KEY, "--pin", "1234")


def tearDownModule():
    daemon.close()


def client(**options):
    return sls.AsyncClient(daemon.tcp, **daemon.certs(), **options)


def answer(challenge: sls.Challenge) -> str:
    """What the user types, read off the emulated device."""
    if challenge.form == "question":
        return token("dscplus", "--key", DSC_KEY, "--pin", "1234", "--challenge", challenge.question)
    first, second = challenge.positions
    return token("card", "--key", CARD_KEY, "--index", str(first), "--index", str(second))


def wrong(text: str) -> str:
    return text[:-1] + str((int(text[-1]) + 1) % 10)


class Logins(unittest.IsolatedAsyncioTestCase):
    async def test_a_dsc_plus_login(self):
        async with client() as gateway:
            devices = await gateway.devices("gina")
            self.assertTrue(devices.required)
            [card] = devices.devices
            self.assertEqual((card.kind, card.label, card.usable), ("dsc-plus", "blue", True))
            challenge = await gateway.challenge("gina", card.device)
            self.assertEqual(challenge.form, "question")
            verdict = await gateway.verify(challenge.challenge, answer(challenge))
            self.assertEqual(verdict, sls.Accepted("gina", card.device, "dsc-plus"))
            self.assertTrue(verdict.accepted)
            # The challenge is used up.
            again = await gateway.verify(challenge.challenge, answer(challenge))
            self.assertEqual(again, sls.UnknownChallenge())

    async def test_a_code_card_login_and_a_wrong_answer(self):
        async with client() as gateway:
            [card] = (await gateway.devices("hugo")).devices
            challenge = await gateway.challenge("hugo", card.device)
            self.assertEqual(challenge.form, "positions")
            right = answer(challenge)
            self.assertEqual(await gateway.verify(challenge.challenge, wrong(right)), sls.Rejected(2))
            verdict = await gateway.verify(challenge.challenge, right)
            self.assertIsInstance(verdict, sls.Accepted)

    async def test_wrong_answers_lock_the_device(self):
        async with client() as gateway:
            [card] = (await gateway.devices("lock")).devices
            for _ in range(3):
                challenge = await gateway.challenge("lock", card.device)
                verdict = await gateway.verify(challenge.challenge, wrong(answer(challenge)))
                self.assertFalse(verdict.accepted)
            challenge = await gateway.challenge("lock", card.device)
            verdict = await gateway.verify(challenge.challenge, answer(challenge))
            self.assertIsInstance(verdict, sls.LockedOut)
            self.assertGreater(verdict.retry_after, 0)
            [locked] = (await gateway.devices("lock")).devices
            self.assertFalse(locked.usable)

    async def test_refusals_are_typed_errors(self):
        async with client() as gateway:
            self.assertEqual(await gateway.devices("nobody"), sls.Devices(True, []))
            [card] = (await gateway.devices("gina")).devices
            with self.assertRaises(sls.NotFound):
                await gateway.challenge("hugo", card.device)
            with self.assertRaises(sls.NoVerifiedNumber):
                await gateway.send_code("gina")
            with self.assertRaises(sls.NotFound) as raised:
                await gateway.push("gina", card.device)  # a card, not an IB Key
            self.assertFalse(raised.exception.retryable)
            self.assertEqual(await gateway.verify(42, "12345678"), sls.UnknownChallenge())

    async def test_a_wrong_certificate_role_is_refused(self):
        # An operator's certificate may not ask for a login's devices.
        async with sls.AsyncClient(daemon.tcp, **daemon.certs("admin")) as operator:
            with self.assertRaises(sls.Forbidden):
                await operator.devices("gina")


class Pipelining(unittest.IsolatedAsyncioTestCase):
    async def test_concurrent_calls_share_one_connection_and_get_their_own_replies(self):
        async with client() as gateway:
            users = [f"user{i}" for i in range(500)] + ["gina"]
            replies = await asyncio.gather(*(gateway.devices(user) for user in users))
            self.assertEqual([len(r.devices) for r in replies], [0] * 500 + [1])
            self.assertEqual(gateway._connection.next_id, len(users) + 1, "one connection")

    async def test_in_flight_calls_are_bounded(self):
        async with client(max_in_flight=4) as gateway:
            await asyncio.gather(*(gateway.devices(f"u{i}") for i in range(50)))
            self.assertEqual(gateway._slots._value, 4)

    def test_the_blocking_client_serves_many_threads(self):
        with sls.Client(daemon.tcp, **daemon.certs()) as gateway:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                replies = list(pool.map(gateway.devices, ["gina"] * 64))
            self.assertTrue(all(len(r.devices) == 1 for r in replies))


class Failures(unittest.IsolatedAsyncioTestCase):
    async def test_no_node_answering_is_unavailable(self):
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        address = "127.0.0.1:%d" % closed.getsockname()[1]
        closed.close()
        async with sls.AsyncClient(address, **daemon.certs(), connect_timeout=1) as gateway:
            with self.assertRaises(sls.Unavailable):
                await gateway.devices("gina")

    async def test_a_dead_node_is_passed_over_for_the_next(self):
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        dead = ("127.0.0.1", closed.getsockname()[1])
        closed.close()
        async with sls.AsyncClient([dead, daemon.tcp], **daemon.certs()) as gateway:
            self.assertEqual(len((await gateway.devices("gina")).devices), 1)


class Restart(unittest.IsolatedAsyncioTestCase):
    async def test_the_client_reconnects_after_a_restart(self):
        async with client() as gateway:
            self.assertEqual(len((await gateway.devices("gina")).devices), 1)
            port = daemon.tcp
            # Same port again: the configuration names an ephemeral one, so
            # the test pins the one it got.
            daemon.config.write_text(daemon.config.read_text().replace('tcp-listen = "127.0.0.1:0"', f'tcp-listen = "{port}"'))
            await asyncio.get_running_loop().run_in_executor(None, daemon.restart)
            self.assertEqual(daemon.tcp, port)
            # The connection was closed by the restart: `devices` changes
            # nothing, so it is sent again on a new connection.
            self.assertEqual(len((await gateway.devices("gina")).devices), 1)


if __name__ == "__main__":
    unittest.main()


class Retries(unittest.IsolatedAsyncioTestCase):
    """Over the connection's request rate (5 a second, burst 5) the daemon
    answers RateLimited with a short retry_after: the client waits it and
    sends again, unless the wait is longer than it may take."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(server_keys="requests-per-connection-per-second = 5\n")

    @classmethod
    def tearDownClass(cls):
        cls.daemon.close()

    async def test_a_short_rate_limit_is_waited_out(self):
        async with sls.AsyncClient(self.daemon.tcp, **self.daemon.certs(), max_retry_wait=1.0) as gateway:
            # One over the burst: it is refused once, then let through.
            replies = await asyncio.gather(*(gateway.devices("gina") for _ in range(6)))
            self.assertEqual(len(replies), 6)

    async def test_a_wait_longer_than_allowed_is_the_callers(self):
        async with sls.AsyncClient(self.daemon.tcp, **self.daemon.certs(), max_retry_wait=0.0) as gateway:
            results = await asyncio.gather(*(gateway.devices("gina") for _ in range(8)), return_exceptions=True)
            limited = [r for r in results if isinstance(r, sls.RateLimited)]
            self.assertTrue(limited, results)
            self.assertTrue(all(0 < r.retry_after <= 1 for r in limited))


class Push(unittest.IsolatedAsyncioTestCase):
    """A push approved, and one refused, by the simulator's IB Key app
    (`sls-sim phone`), told the number the login shows as a person reads
    it off the page."""

    SEED = "17" * 32

    @classmethod
    def setUpClass(cls):
        import subprocess

        from daemon import BIN

        cls.ib_key = daemon.admin("enroll", "ivan", "ib-key")["device"]
        key = subprocess.run(
            [str(BIN / "sls-sim"), "phone", "--print-key", "--seed", cls.SEED],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        daemon.admin("bind-push-key", str(cls.ib_key), key)
        cls.phones = []

        def phone(*more):
            started = subprocess.Popen(
                [str(BIN / "sls-sim"), "phone", "--addr", daemon.quic, "--data-dir", str(daemon.data),
                 "--device", str(cls.ib_key), "--seed", cls.SEED, *more],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            assert started.stdout.readline().strip() == "subscribed"
            cls.phones.append(started)
            return started

        cls.phone = staticmethod(phone)

    @classmethod
    def tearDownClass(cls):
        for phone in cls.phones:
            cls.hang_up(phone)

    @staticmethod
    def hang_up(phone):
        """Ends the app (end of its input) and waits for it."""
        if not phone.stdin.closed:
            phone.stdin.close()
        phone.wait(timeout=10)
        phone.stdout.close()

    async def choose(self, phone, number):
        phone.stdin.write(f"{number}\n")
        phone.stdin.flush()
        said = await asyncio.get_running_loop().run_in_executor(None, phone.stdout.readline)
        self.assertEqual(said.strip(), f"chose {number}")

    async def test_a_push_approved_and_one_denied(self):
        phone = self.phone()
        async with client() as gateway:
            sent = await gateway.push("ivan", self.ib_key)
            self.assertTrue(10 <= sent.match_number <= 99)
            waiting = asyncio.ensure_future(gateway.await_push(sent.push))
            await self.choose(phone, sent.match_number)
            self.assertEqual(await waiting, sls.Accepted("ivan", self.ib_key, "ib-key"))
        self.hang_up(phone)
        # The user says "this was not me" on the phone.
        denier = self.phone("--deny")
        async with client() as gateway:
            sent = await gateway.push("ivan", self.ib_key)
            self.assertEqual(await gateway.await_push(sent.push), sls.Denied())
