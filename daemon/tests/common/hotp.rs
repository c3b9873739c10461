//! Logins the tests can compute: alice's HOTP tokens, with the code for
//! each counter, through any node.

use slsd::identity::{DeviceId, Serial, Username};
use slsd::otp::hotp::{Digits, hotp};
use slsd::otp::token::TokenAlgorithm;
use slsd::otp::{HashAlgorithm, HmacKey, SecretKey};
use slsd::profile::DeviceKind;
use slsd::wire::request::{Answer, Pin};
use slsd::wire::token::{NewToken, TokenInfo};
use slsd::wire::{EnrollRequest, Operation, Reply, Verdict};

use super::nodes::Node;

pub const KEY: &[u8] = b"12345678901234567890";

pub fn alice() -> Username {
    Username::new("alice").unwrap()
}

pub fn enroll(kind: DeviceKind, pin: Option<&str>) -> Operation {
    Operation::Enroll(EnrollRequest {
        user: alice(),
        kind,
        secret: None,
        pin: pin.map(Pin::new),
        label: String::new(),
    })
}

pub fn enrolled(node: &Node, operation: Operation) -> DeviceId {
    match node.call(operation) {
        Reply::Enrolled { device, .. } => device,
        other => panic!("{}: enrolled: {other:?}", node.name()),
    }
}

/// What a vendor's file says of a six-digit HOTP (SHA-1) token of serial
/// `serial`, counter 0.
pub fn hotp_info(serial: &str) -> TokenInfo {
    TokenInfo {
        serial: Serial::new(serial).unwrap(),
        algorithm: TokenAlgorithm::Hotp {
            hash: HashAlgorithm::Sha1,
            digits: Digits::exactly(6),
        },
        counter: 0,
        valid_from: None,
        valid_until: None,
        manufacturer: "Acme".into(),
    }
}

/// An HOTP token of serial `serial` imported and assigned to alice: a
/// device whose codes the test can compute (every such token has [`KEY`]).
pub fn hotp_token(node: &Node, serial: &str) -> DeviceId {
    let token = NewToken {
        info: hotp_info(serial),
        key: SecretKey::from_bytes(KEY.to_vec()).unwrap(),
    };
    let import = Operation::ImportTokens {
        import: 0,
        commit: true,
        tokens: vec![token],
    };
    assert!(matches!(node.call(import), Reply::TokensImported { .. }));
    enrolled(
        node,
        Operation::AssignToken {
            serial: Serial::new(serial).unwrap(),
            user: alice(),
            pin: None,
            label: "token".into(),
        },
    )
}

/// A login with the token's code for `counter`.
pub fn login(node: &Node, device: DeviceId, counter: u64) -> bool {
    let Reply::Challenge { challenge, .. } = node.call(Operation::Challenge {
        user: alice(),
        device,
    }) else {
        panic!("{}: a challenge", node.name())
    };
    let hmac = HmacKey::new(
        HashAlgorithm::Sha1,
        &SecretKey::from_bytes(KEY.to_vec()).unwrap(),
    );
    let code = hotp(&hmac, counter, Digits::exactly(6));
    matches!(
        node.call(Operation::Verify {
            challenge,
            response: Answer::new(code.as_str()),
        }),
        Reply::Verdict(Verdict::Accepted { .. })
    )
}
