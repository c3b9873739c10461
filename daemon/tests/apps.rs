//! Authenticator apps (`totp-app`) on both stores: enrolment answers an
//! `otpauth://` URI with the profile's parameters; the device is pending
//! until its first code verifies, then active; no time step is accepted
//! twice. And the URI's QR code, read back by a QR decoder.

mod common;

use common::nodes::{Node, T0};
use slsd::clock::Timestamp;
use slsd::identity::{DeviceId, Username};
use slsd::otp::hotp::{Digits, hotp};
use slsd::otp::{HashAlgorithm, HmacKey, SecretKey};
use slsd::profile::DeviceKind;
use slsd::wire::request::{Answer, Page};
use slsd::wire::{ChallengeText, DeviceStatus, EnrollRequest, Operation, Reply, Verdict};

fn grace() -> Username {
    Username::new("grace").unwrap()
}

/// The key an `otpauth://` URI carries, and its query.
fn key_of(uri: &str) -> (SecretKey, String) {
    let (_, query) = uri.split_once('?').unwrap();
    let secret = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("secret="))
        .unwrap();
    let bytes = data_encoding::BASE32_NOPAD
        .decode(secret.as_bytes())
        .unwrap();
    (SecretKey::from_bytes(bytes).unwrap(), query.to_owned())
}

fn status(node: &Node, device: DeviceId) -> DeviceStatus {
    let Reply::Devices { devices, .. } = node.call(Operation::ListDevices {
        user: grace(),
        page: Page::first(100),
    }) else {
        panic!("{}: a listing", node.name())
    };
    devices.iter().find(|d| d.device == device).unwrap().status
}

fn login(node: &Node, device: DeviceId, code: &str, now: Timestamp) -> Verdict {
    let asked = Operation::Challenge {
        user: grace(),
        device,
    };
    let Reply::Challenge {
        challenge, text, ..
    } = node.call_at(asked, now)
    else {
        panic!("{}: a challenge", node.name())
    };
    assert_eq!(text, ChallengeText::EnterCode);
    let answer = Operation::Verify {
        challenge,
        response: Answer::new(code),
    };
    match node.call_at(answer, now) {
        Reply::Verdict(verdict) => verdict,
        other => panic!("{}: a verdict: {other:?}", node.name()),
    }
}

#[test]
fn an_app_is_pending_until_its_first_code_and_never_takes_a_step_twice() {
    for (node, _dir) in Node::both() {
        let name = node.name();
        let Reply::AppEnrolled { device, uri } = node.call(Operation::Enroll(EnrollRequest {
            user: grace(),
            kind: DeviceKind::TotpApp,
            secret: None,
            pin: None,
            label: "phone".into(),
        })) else {
            panic!("{name}: an app enrolled")
        };
        let uri = uri.as_str().to_owned();
        assert!(
            uri.starts_with("otpauth://totp/sls:grace?"),
            "{name}: {uri}"
        );
        let (key, query) = key_of(&uri);
        assert_eq!(key.expose_secret().len(), 20, "{name}: SHA1's length");
        assert!(
            query.ends_with("&issuer=sls&algorithm=SHA1&digits=6&period=30"),
            "{name}: {query}"
        );
        let hmac = HmacKey::new(HashAlgorithm::Sha1, &key);
        let code = |step: u64| hotp(&hmac, step, Digits::exactly(6)).as_str().to_owned();
        let step = T0.0 / 30_000;

        assert_eq!(status(&node, device), DeviceStatus::Pending, "{name}");
        let Reply::Devices { devices, .. } = node.call(Operation::Devices { user: grace() }) else {
            panic!("{name}: devices")
        };
        assert!(
            devices.is_empty(),
            "{name}: a pending app offered to a login"
        );
        // An app that ignored the parameters (here: a code of another key
        // or step) leaves it pending.
        assert!(
            matches!(
                login(&node, device, &code(step + 5), T0),
                Verdict::Rejected { .. }
            ),
            "{name}"
        );
        assert_eq!(status(&node, device), DeviceStatus::Pending, "{name}");
        assert!(
            matches!(
                login(&node, device, &code(step), T0),
                Verdict::Accepted { .. }
            ),
            "{name}"
        );
        assert_eq!(status(&node, device), DeviceStatus::Active, "{name}");
        // The step is used up; the next one works.
        assert!(
            matches!(
                login(&node, device, &code(step), T0),
                Verdict::Rejected { .. }
            ),
            "{name}"
        );
        let next = T0.plus(std::time::Duration::from_secs(30));
        assert!(
            matches!(
                login(&node, device, &code(step + 1), next),
                Verdict::Accepted { .. }
            ),
            "{name}"
        );
    }
}

/// The SVG the QR code is written as, drawn on a grid of pixels and read
/// by a QR decoder (rqrr): it holds the URI exactly.
#[test]
fn the_qr_code_reads_back_as_the_uri() {
    let key = SecretKey::from_bytes((1..=20).collect()).unwrap();
    let parameters = slsd::otp::app::AppParameters {
        hash: HashAlgorithm::Sha1,
        digits: Digits::exactly(6),
        step: slsd::otp::totp::TimeStep::THIRTY_SECONDS,
    };
    let uri = slsd::otp::app::otpauth_uri("Bank & Co", "grace.h@x", &key, parameters);
    assert!(
        uri.as_str().starts_with("otpauth://totp/Bank%20%26%20Co:grace.h%40x?secret=AEBAGBAFAYDQQCIKBMGA2DQPCAIREEYU&issuer=Bank%20%26%20Co&"),
        "{}",
        uri.as_str()
    );
    let svg = slsd::otp::app::qr_svg(uri.as_str()).unwrap();
    let number = |text: &str, after: &str| -> usize {
        let start = text.find(after).unwrap() + after.len();
        let digits: String = text[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    let side = number(&svg, "width=\"");
    let mut dark = vec![false; side * side];
    // The renderer draws each dark module as "M{x} {y}h{w}v{h}H{x}V{y}".
    let path = &svg[svg.find(" d=\"").unwrap() + 4..];
    let path = &path[..path.find('"').unwrap()];
    for square in path.split('M').filter(|s| !s.is_empty()) {
        let (x, rest) = square.split_once(' ').unwrap();
        let (y, rest) = rest.split_once('h').unwrap();
        let (w, _) = rest.split_once('v').unwrap();
        let (x, y, w): (usize, usize, usize) =
            (x.parse().unwrap(), y.parse().unwrap(), w.parse().unwrap());
        for row in y..y + w {
            for column in x..x + w {
                dark[row * side + column] = true;
            }
        }
    }
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(side, side, |x, y| {
        if dark[y * side + x] { 0 } else { 255 }
    });
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1);
    let (_, content) = grids[0].decode().unwrap();
    assert_eq!(content, uri.as_str());
}
