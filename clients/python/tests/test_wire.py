"""The codec against PROTOCOL.md's worked examples, byte for byte: the
same examples the daemon's own codec is tested against
(daemon/tests/protocol_doc.rs), so both sides read one specification."""

import pathlib
import re
import unittest

import sls
from sls import wire
from sls.errors import ProtocolError

PROTOCOL = pathlib.Path(__file__).resolve().parents[3] / "PROTOCOL.md"


def examples():
    """Each ``<!-- example: NAME -->`` block of PROTOCOL.md as bytes."""
    found = {}
    pattern = re.compile(r"<!-- example: ([a-z0-9-]+) -->\n```text\n(.*?)```", re.S)
    for name, block in pattern.findall(PROTOCOL.read_text()):
        hex_digits = "".join(line.split("#")[0] for line in block.splitlines())
        found[name] = bytes.fromhex(hex_digits)
    return found


EXAMPLES = examples()
CHALLENGE_ID = 0x1122334455667788


def body(name):
    frame = EXAMPLES[name]
    parsed, end = wire.split_frame(frame)
    assert end == len(frame)
    return parsed


class Requests(unittest.TestCase):
    def test_each_gateway_request_is_the_documented_frame(self):
        self.assertEqual(wire.request(1, wire.OP_DEVICES, "jdoe"), EXAMPLES["devices-request"])
        self.assertEqual(
            wire.request(2, wire.OP_CHALLENGE, "jdoe", ("u64", 7)), EXAMPLES["challenge-request"]
        )
        self.assertEqual(
            wire.request(3, wire.OP_VERIFY, ("u64", CHALLENGE_ID), "65347737"),
            EXAMPLES["verify-request"],
        )
        self.assertEqual(
            wire.request(3, wire.OP_VERIFY, ("u64", CHALLENGE_ID), "755224"),
            EXAMPLES["token-verify-request"],
        )
        self.assertEqual(
            wire.request(5, wire.OP_SEND_CODE, "jdoe", ("u8", wire.CHANNELS["sms"])),
            EXAMPLES["send-code-request"],
        )
        self.assertEqual(wire.request(6, wire.OP_PUSH, "jdoe", ("u64", 8)), EXAMPLES["push-request"])


class Replies(unittest.TestCase):
    def test_each_gateway_reply_reads_as_documented(self):
        self.assertEqual(
            wire.reply(body("devices-reply")),
            (1, sls.Devices(True, [sls.Device(7, "dsc-plus", "card", 0.0, "active", None, "")])),
        )
        self.assertEqual(
            wire.reply(body("challenge-reply")),
            (2, sls.Challenge(CHALLENGE_ID, "question", "031337", None, 120.0)),
        )
        self.assertEqual(
            wire.reply(body("card-challenge-reply")),
            (2, sls.Challenge(CHALLENGE_ID, "positions", None, (17, 203), 120.0)),
        )
        self.assertEqual(
            wire.reply(body("token-challenge-reply")),
            (2, sls.Challenge(CHALLENGE_ID, "code", None, None, 120.0)),
        )
        self.assertEqual(wire.reply(body("verdict-accepted")), (3, sls.Accepted("jdoe", 7, "dsc-plus")))
        self.assertEqual(wire.reply(body("verdict-rejected")), (3, sls.Rejected(2)))
        self.assertEqual(wire.reply(body("verdict-locked-out")), (3, sls.LockedOut(60.0)))
        self.assertEqual(wire.reply(body("code-sent-reply")), (5, sls.CodeSent(0x0102030405060708, 300.0, 120.0)))
        self.assertEqual(wire.reply(body("push-sent-reply")), (6, sls.PushSent(0x1111222233334444, 42, 60.0)))

    def test_an_error_reply_is_its_typed_error(self):
        request_id, error = wire.reply(body("error-forbidden"))
        self.assertEqual(request_id, 4)
        self.assertIsInstance(error, sls.Forbidden)
        self.assertEqual((error.code, error.message, error.retry_after), (3, "enroll needs the admin role", 0.0))
        self.assertFalse(error.retryable)

    def test_what_a_gateway_is_never_sent_is_a_protocol_error(self):
        # A push notice goes to phones, a carrier message to bridges.
        for name in ("push-notice", "carrier-message", "app-enrolled-reply"):
            with self.subTest(name), self.assertRaises(ProtocolError):
                wire.reply(body(name))

    def test_a_truncated_or_padded_body_is_a_protocol_error(self):
        whole = body("verdict-accepted")
        for cut in range(9, len(whole)):
            with self.subTest(cut=cut), self.assertRaises(ProtocolError):
                wire.reply(whole[:cut])
        with self.assertRaises(ProtocolError):
            wire.reply(whole + b"\x00")

    def test_frames_are_split_whole_and_bounded(self):
        frame = EXAMPLES["verdict-rejected"]
        self.assertIsNone(wire.split_frame(frame[:-1]))
        self.assertEqual(wire.split_frame(frame + frame, len(frame)), (frame[4:], 2 * len(frame)))
        with self.assertRaises(ProtocolError):
            wire.split_frame(b"\x00\x00\x00\x00")
        with self.assertRaises(ProtocolError):
            wire.split_frame((wire.MAX_FRAME + 1).to_bytes(4, "big"))


if __name__ == "__main__":
    unittest.main()
