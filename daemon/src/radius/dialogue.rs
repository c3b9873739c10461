//! The login dialogue a RADIUS client (a VPN concentrator, a firewall)
//! holds with sls, as pure decisions: what the password of a first
//! Access-Request asks for, which device answers, what the user reads in
//! each Reply-Message, and the `State` that carries a login from an
//! Access-Challenge to the next Access-Request.
//!
//! The `State` is not kept anywhere: it is the challenge's id (or the
//! push's, or a mark for an SMS code) and its time, signed with HMAC-SHA256
//! under a key derived from the deployment's key file, bound to the client
//! and the user name. Any node of a deployment can take the second request
//! of a login, nothing grows with logins left unfinished, and a forged or
//! altered `State` is refused before anything is looked up. Replaying one
//! gains nothing: the engine answers a used challenge `UnknownChallenge`.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::clock::Timestamp;
use crate::identity::{DeviceId, Username};
use crate::profile::DeviceKind;
use crate::wire::{ChallengeText, DeviceEntry, DeviceStatus, ErrorCode, Verdict};

/// What the password of an Access-Request without `State` asks for.
#[derive(Clone, PartialEq)]
pub enum Choice {
    /// Empty: the user's first device that can be challenged.
    FirstDevice,
    /// `1`, `2`, …: the device at that place in the list a challenge shows.
    Numbered(usize),
    /// `push`: approve on the IB Key app.
    Push,
    /// `sms` or `voice`: a code by text message or call.
    Code(crate::phone::Channel),
    /// Six digits or more: a code the user already holds (an authenticator
    /// app, an event or time token, a temporary code), checked at once.
    OneShot(crate::wire::request::Answer),
}

impl std::fmt::Debug for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FirstDevice => f.write_str("FirstDevice"),
            Self::Numbered(n) => write!(f, "Numbered({n})"),
            Self::Push => f.write_str("Push"),
            Self::Code(channel) => write!(f, "Code({channel:?})"),
            Self::OneShot(_) => f.write_str("OneShot(..)"),
        }
    }
}

/// Digits at least this long are a code, not a device's number.
const ONE_SHOT_DIGITS: usize = 6;

impl Choice {
    /// Reads the password of a first request; `None`: it asks for nothing
    /// this front end offers.
    pub fn parse(password: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(password).ok()?.trim();
        if text.is_empty() {
            return Some(Self::FirstDevice);
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            if text.len() >= ONE_SHOT_DIGITS {
                return Some(Self::OneShot(crate::wire::request::Answer::new(text)));
            }
            return text.parse().ok().filter(|&n| n >= 1).map(Self::Numbered);
        }
        match text.to_ascii_lowercase().as_str() {
            "push" => Some(Self::Push),
            "sms" => Some(Self::Code(crate::phone::Channel::Sms)),
            "voice" | "call" => Some(Self::Code(crate::phone::Channel::Voice)),
            _ => None,
        }
    }
}

/// Whether a login may use `entry` now: it is active (or an app waiting
/// for its first code), not locked, and answers challenges (an SMS
/// device is reached with `sms`).
pub fn usable(entry: &DeviceEntry) -> bool {
    matches!(entry.status, DeviceStatus::Active | DeviceStatus::Pending)
        && entry.locked_for.is_zero()
        && entry.kind != DeviceKind::Sms
}

/// Kinds whose challenge asks nothing: the user types the code they hold.
pub fn holds_code(kind: DeviceKind) -> bool {
    matches!(
        kind,
        DeviceKind::TotpApp | DeviceKind::Token | DeviceKind::Temporary
    )
}

/// The device `choice` names among `devices` (in the order `Devices`
/// gave them), or why none.
pub fn pick(devices: &[DeviceEntry], choice: &Choice) -> Result<DeviceId, &'static str> {
    match choice {
        Choice::FirstDevice => devices
            .iter()
            .find(|d| usable(d))
            .map(|d| d.device)
            .ok_or(NO_DEVICE),
        Choice::Numbered(n) => match n.checked_sub(1).and_then(|i| devices.get(i)) {
            Some(entry) if usable(entry) => Ok(entry.device),
            Some(entry) if !entry.locked_for.is_zero() => Err(LOCKED_DEVICE),
            Some(_) => Err("That device cannot be used now."),
            None => Err("There is no device with that number."),
        },
        Choice::Push => devices
            .iter()
            .find(|d| d.kind == DeviceKind::IbKey && usable(d))
            .map(|d| d.device)
            .ok_or("No IB Key app can approve this login."),
        Choice::OneShot(_) => devices
            .iter()
            .find(|d| holds_code(d.kind) && usable(d))
            .map(|d| d.device)
            .ok_or(NO_DEVICE),
        Choice::Code(_) => Err("A code is sent by the engine, not to a device."),
    }
}

const NO_DEVICE: &str = "No device can answer for this login.";
const LOCKED_DEVICE: &str = "That device is locked after too many wrong answers; use another.";

/// The Reply-Message lines of an Access-Challenge for a device's challenge:
/// what to do with it, then the other devices the user may choose.
pub fn challenge_lines(
    devices: &[DeviceEntry],
    device: DeviceId,
    text: &ChallengeText,
) -> Vec<String> {
    let entry = devices.iter().find(|d| d.device == device);
    let name = entry.map_or_else(|| "your device".to_owned(), describe);
    let mut lines = vec![match text {
        ChallengeText::Question(digits) => {
            format!("Challenge {digits}: enter it into {name} and type the response.")
        }
        ChallengeText::CardPositions(first, second) => format!(
            "Type the codes at positions {first} and {second} of {name}, one after the other."
        ),
        ChallengeText::EnterCode => format!("Type the code {name} shows."),
    }];
    let others: Vec<String> = devices
        .iter()
        .enumerate()
        .filter(|(_, d)| d.device != device && usable(d))
        .map(|(i, d)| format!("{} {}", i + 1, describe(d)))
        .collect();
    let mut choices = others;
    if devices
        .iter()
        .any(|d| d.kind == DeviceKind::IbKey && usable(d))
    {
        choices.push("push".to_owned());
    }
    if !choices.is_empty() {
        lines.push(format!(
            "Or start again with one of these as the password: {}.",
            choices.join(", ")
        ));
    }
    lines
}

/// A device as the user knows it: its kind and label.
fn describe(entry: &DeviceEntry) -> String {
    let kind = match entry.kind {
        DeviceKind::DscPlus => "your DSC+ card",
        DeviceKind::Scc | DeviceKind::OnlineScc => "your security code card",
        DeviceKind::IbKey => "your IB Key app",
        DeviceKind::Sms => "your phone",
        DeviceKind::Temporary => "your temporary code",
        DeviceKind::LegacyDsc | DeviceKind::Gold | DeviceKind::Platinum => "your card",
        DeviceKind::Token => "your token",
        DeviceKind::TotpApp => "your authenticator app",
    };
    if entry.label.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} \"{}\"", entry.label)
    }
}

/// The Reply-Message of an Access-Challenge for a push.
pub fn push_lines(match_number: u8, again: bool) -> Vec<String> {
    let first = if again {
        "Not approved yet."
    } else {
        "A request went to your IB Key app."
    };
    vec![
        format!("{first} Approve it there by choosing {match_number}."),
        "Then press Enter here (leave the answer empty).".to_owned(),
    ]
}

/// The Reply-Message of an Access-Challenge after a code was sent.
pub fn code_sent_line(channel: crate::phone::Channel) -> String {
    match channel {
        crate::phone::Channel::Sms => "A code is on its way by text message: type it.".to_owned(),
        crate::phone::Channel::Voice => "You will be called with a code: type it.".to_owned(),
    }
}

/// What an Access-Reject says for a verdict other than `Accepted`. The
/// same words whoever the user is: nothing here tells whether a user
/// exists.
pub fn verdict_line(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Accepted { .. } => "Accepted.".to_owned(),
        Verdict::Rejected { .. } => "Wrong answer. Start again to try once more.".to_owned(),
        Verdict::Expired => "The challenge expired. Start again.".to_owned(),
        Verdict::LockedOut { retry_after } => locked_line(*retry_after),
        Verdict::UnknownChallenge => "This login is no longer open. Start again.".to_owned(),
        Verdict::Denied => "The login was refused on your phone.".to_owned(),
    }
}

fn locked_line(retry_after: Duration) -> String {
    if retry_after == Duration::MAX || retry_after.as_millis() >= u128::from(u64::MAX) {
        "This device is locked after too many wrong answers; support must unlock it.".to_owned()
    } else {
        let minutes = retry_after.as_secs().div_ceil(60).max(1);
        format!("Too many wrong answers: this device is locked for {minutes} min.")
    }
}

/// What an Access-Reject says for an error reply of the engine.
pub fn error_line(code: ErrorCode, retry_after: Duration, message: &str) -> String {
    match code {
        ErrorCode::RateLimited => {
            let seconds = retry_after.as_secs().max(1);
            format!("Too many attempts; try again in {seconds} s.")
        }
        ErrorCode::NotFound => "That device cannot be used now.".to_owned(),
        ErrorCode::PhoneUnreachable => {
            "Your phone is not connected; leave the password empty to use a card.".to_owned()
        }
        ErrorCode::NoVerifiedNumber => "No verified phone number: use a card.".to_owned(),
        ErrorCode::DeliveryUnavailable => "Codes cannot be sent now: use a card.".to_owned(),
        ErrorCode::Busy
        | ErrorCode::TooManyChallenges
        | ErrorCode::StoreUnavailable
        | ErrorCode::ShuttingDown
        | ErrorCode::Internal => "The service is busy. Try again.".to_owned(),
        _ => format!("The login cannot go on: {message}."),
    }
}

/// Where a login stands between an Access-Challenge and the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Waiting for the response to this challenge.
    Challenge(crate::identity::ChallengeId),
    /// Waiting for the code sent by SMS or call.
    Code,
    /// Waiting for the phone to approve this push; the number it shows.
    Push(crate::identity::PushId, u8),
}

/// A signed `State`: version, step, id, match number, issued at, MAC.
pub const STATE_LEN: usize = 1 + 1 + 8 + 1 + 8 + STATE_MAC_LEN;
const STATE_MAC_LEN: usize = 16;
const STATE_VERSION: u8 = 1;

/// The key `State`s are signed with (wiped on drop).
pub struct StateKey(zeroize::Zeroizing<[u8; 32]>);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(..)")
    }
}

impl StateKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(zeroize::Zeroizing::new(key))
    }

    fn mac(&self, client: &str, user: &Username, body: &[u8]) -> Hmac<Sha256> {
        #[allow(clippy::expect_used)] // HMAC takes keys of any length
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.as_slice()).expect("any key length");
        mac.update(b"sls/1 radius state");
        for part in [client.as_bytes(), user.as_str().as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(body);
        mac
    }

    /// The `State` for `step`, issued `now` to `client` for `user`.
    pub fn seal(&self, client: &str, user: &Username, step: Step, now: Timestamp) -> Vec<u8> {
        let (kind, id, number) = match step {
            Step::Challenge(id) => (1, id.0, 0),
            Step::Code => (2, 0, 0),
            Step::Push(id, number) => (3, id.0, number),
        };
        let mut state = Vec::with_capacity(STATE_LEN);
        state.extend_from_slice(&[STATE_VERSION, kind]);
        state.extend_from_slice(&id.to_be_bytes());
        state.push(number);
        state.extend_from_slice(&now.0.to_be_bytes());
        let tag = self.mac(client, user, &state).finalize().into_bytes();
        state.extend_from_slice(tag.get(..STATE_MAC_LEN).unwrap_or_default());
        state
    }

    /// The step a `State` carries, if it was sealed for this client and
    /// user and is younger than `ttl` (the MAC is checked in constant time
    /// before anything else is read).
    pub fn open(
        &self,
        client: &str,
        user: &Username,
        state: &[u8],
        now: Timestamp,
        ttl: Duration,
    ) -> Option<Step> {
        let (body, tag) = state.split_at_checked(STATE_LEN - STATE_MAC_LEN)?;
        self.mac(client, user, body)
            .verify_truncated_left(tag)
            .ok()
            .filter(|()| tag.len() == STATE_MAC_LEN)?;
        let [
            version,
            kind,
            id @ ..,
            number,
            i0,
            i1,
            i2,
            i3,
            i4,
            i5,
            i6,
            i7,
        ] = *body.first_chunk::<19>()?;
        let issued = u64::from_be_bytes([i0, i1, i2, i3, i4, i5, i6, i7]);
        let age = Duration::from_millis(now.0.saturating_sub(issued));
        if version != STATE_VERSION || issued > now.0 || age > ttl {
            return None;
        }
        let id = u64::from_be_bytes(id);
        match kind {
            1 => Some(Step::Challenge(crate::identity::ChallengeId(id))),
            2 => Some(Step::Code),
            3 => Some(Step::Push(crate::identity::PushId(id), number)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{ChallengeId, PushId};
    use crate::phone::Channel;

    fn user(name: &str) -> Username {
        Username::new(name).unwrap()
    }

    fn entry(device: u64, kind: DeviceKind, label: &str) -> DeviceEntry {
        DeviceEntry {
            device: DeviceId(device),
            kind,
            label: label.into(),
            locked_for: Duration::ZERO,
            status: DeviceStatus::Active,
            owner: None,
        }
    }

    #[test]
    fn the_password_of_a_first_request_chooses() {
        assert_eq!(Choice::parse(b""), Some(Choice::FirstDevice));
        assert_eq!(Choice::parse(b"  \n"), Some(Choice::FirstDevice));
        assert_eq!(Choice::parse(b"2"), Some(Choice::Numbered(2)));
        assert_eq!(Choice::parse(b"0"), None);
        assert_eq!(Choice::parse(b"PUSH"), Some(Choice::Push));
        assert_eq!(Choice::parse(b"sms"), Some(Choice::Code(Channel::Sms)));
        assert_eq!(Choice::parse(b"voice"), Some(Choice::Code(Channel::Voice)));
        assert!(
            matches!(Choice::parse(b"123456"), Some(Choice::OneShot(a)) if a.as_str() == "123456")
        );
        assert_eq!(Choice::parse(b"hunter2"), None);
        assert_eq!(Choice::parse(&[0xff, 0xfe]), None);
        assert_eq!(
            format!("{:?}", Choice::parse(b"987654").unwrap()),
            "OneShot(..)"
        );
    }

    #[test]
    fn a_choice_picks_a_usable_device() {
        let mut locked = entry(1, DeviceKind::DscPlus, "old");
        locked.locked_for = Duration::from_secs(60);
        let devices = vec![
            locked,
            entry(2, DeviceKind::Sms, "mobile"),
            entry(3, DeviceKind::Scc, "codes"),
            entry(4, DeviceKind::IbKey, "phone"),
            entry(5, DeviceKind::TotpApp, "app"),
        ];
        assert_eq!(pick(&devices, &Choice::FirstDevice), Ok(DeviceId(3)));
        assert_eq!(pick(&devices, &Choice::Numbered(4)), Ok(DeviceId(4)));
        assert_eq!(pick(&devices, &Choice::Numbered(1)), Err(LOCKED_DEVICE));
        assert!(
            pick(&devices, &Choice::Numbered(2)).is_err(),
            "SMS is reached with sms"
        );
        assert!(pick(&devices, &Choice::Numbered(9)).is_err());
        assert_eq!(pick(&devices, &Choice::Push), Ok(DeviceId(4)));
        let code = Choice::OneShot(crate::wire::request::Answer::new("123456"));
        assert_eq!(pick(&devices, &code), Ok(DeviceId(5)));
        assert_eq!(pick(&[], &Choice::FirstDevice), Err(NO_DEVICE));
    }

    #[test]
    fn a_challenge_says_what_to_type_and_what_else_to_choose() {
        let devices = vec![
            entry(3, DeviceKind::DscPlus, "blue"),
            entry(4, DeviceKind::IbKey, ""),
        ];
        let lines = challenge_lines(
            &devices,
            DeviceId(3),
            &ChallengeText::Question("123456".into()),
        );
        assert_eq!(
            lines,
            [
                "Challenge 123456: enter it into your DSC+ card \"blue\" and type the response.",
                "Or start again with one of these as the password: 2 your IB Key app, push."
            ]
        );
        let lines = challenge_lines(
            &devices[..1],
            DeviceId(3),
            &ChallengeText::CardPositions(17, 203),
        );
        assert_eq!(
            lines,
            [
                "Type the codes at positions 17 and 203 of your DSC+ card \"blue\", one after the other."
            ]
        );
    }

    #[test]
    fn lockouts_say_how_long() {
        let minutes = verdict_line(&Verdict::LockedOut {
            retry_after: Duration::from_secs(61),
        });
        assert_eq!(
            minutes,
            "Too many wrong answers: this device is locked for 2 min."
        );
        let hard = verdict_line(&Verdict::LockedOut {
            retry_after: Duration::from_millis(u64::MAX),
        });
        assert!(hard.contains("support"), "{hard}");
    }

    #[test]
    fn a_state_opens_only_for_its_client_and_user_unaltered_and_in_time() {
        let key = StateKey::new([7; 32]);
        let now = Timestamp(1_000_000);
        let ttl = Duration::from_secs(300);
        let gina = user("gina");
        for step in [
            Step::Challenge(ChallengeId(42)),
            Step::Code,
            Step::Push(PushId(9), 57),
        ] {
            let state = key.seal("vpn", &gina, step, now);
            assert_eq!(state.len(), STATE_LEN);
            assert_eq!(key.open("vpn", &gina, &state, now, ttl), Some(step));
            let later = Timestamp(now.0 + 300_000);
            assert_eq!(key.open("vpn", &gina, &state, later, ttl), Some(step));
            let too_late = Timestamp(now.0 + 300_001);
            assert_eq!(key.open("vpn", &gina, &state, too_late, ttl), None);
            assert_eq!(key.open("vpn2", &gina, &state, now, ttl), None);
            assert_eq!(key.open("vpn", &user("hugo"), &state, now, ttl), None);
            assert_eq!(
                StateKey::new([8; 32]).open("vpn", &gina, &state, now, ttl),
                None
            );
            for at in 0..state.len() {
                let mut changed = state.clone();
                changed[at] ^= 1;
                assert_eq!(
                    key.open("vpn", &gina, &changed, now, ttl),
                    None,
                    "byte {at}"
                );
            }
            assert_eq!(
                key.open("vpn", &gina, &state[..STATE_LEN - 1], now, ttl),
                None
            );
        }
    }
}
