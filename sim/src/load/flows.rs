//! One flow of a load run: a challenge/response login, an SMS login or a
//! push login, as a gateway and the user's device would do it.

use std::time::{Duration, Instant};

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use slsd::identity::DeviceId;
use slsd::phone::Channel;
use slsd::profile::DeviceKind;
use slsd::wire::request::Answer;
use slsd::wire::{ChallengeText, Operation, Reply, Verdict};

use super::shared::{Shared, lock, unix_secs, verdict_name};
use super::{FlowMix, LoadPlan, OBSERVED};
use crate::client::Pipeline;
use crate::device::EmulatedDevice;
use crate::report::{Flow, Op};

/// Where a login started on pipeline `part` sends its answer: the same
/// stream of the next connection, which is on the next node when the
/// target has several, so every login of a multi-node run is verified by a
/// node other than the one that issued its challenge. One connection: the
/// same pipeline.
pub(super) fn verifier_of(
    pipelines: &[Pipeline],
    part: usize,
    plan: &LoadPlan,
    own: &Pipeline,
) -> Pipeline {
    let next = (part + plan.streams.max(1)) % pipelines.len().max(1);
    pipelines.get(next).unwrap_or(own).clone()
}

/// The random choices of one flow: which flow, which user, which device.
#[derive(Debug, Clone, Copy)]
pub(super) struct Roll {
    flow: Flow,
    member: usize,
    pick: usize,
}

impl Roll {
    pub(super) fn draw(rng: &mut ChaCha8Rng, flows: &FlowMix) -> Self {
        Self {
            flow: flows.pick(rng.random_range(0..flows.total().max(1))),
            member: rng.random_range(0..1 << 30),
            pick: rng.random_range(0..64usize),
        }
    }
}

/// Runs the rolled flow for the rolled user.
pub(super) async fn one_flow(
    shared: &Shared,
    (gateway, verifier): (&Pipeline, &Pipeline),
    part: usize,
    roll: Roll,
    due: Instant,
) {
    let list = match roll.flow {
        Flow::Login | Flow::Withdrawal => {
            // 1 to 5,000 USD, drawn from the roll: some users reach their
            // kind's limit during a long run, which is part of the test.
            let amount =
                (roll.flow == Flow::Withdrawal).then(|| (roll.member as u64 % 5_000 + 1) * 100);
            let (permits, list) = &shared.login_users;
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            let Some(member) = lock(list).pop_front() else {
                return;
            };
            let who = (member, amount);
            login(shared, (gateway, verifier), part, who, roll.pick, due).await;
            lock(list).push_back(member);
            return;
        }
        Flow::Sms => &shared.sms_users,
        Flow::Push => &shared.push_users,
    };
    let (permits, list) = list;
    let Ok(_permit) = permits.acquire().await else {
        return;
    };
    let Some(member) = lock(list).pop_front() else {
        return;
    };
    match roll.flow {
        Flow::Sms => sms_login(shared, gateway, part, member, due).await,
        _ => push_login(shared, gateway, part, member, due).await,
    }
    lock(list).push_back(member);
}

/// An SMS login: send a code, read it off the phone, verify it.
async fn sms_login(shared: &Shared, gateway: &Pipeline, part: usize, member: usize, due: Instant) {
    let Some(holder) = shared.members.get(member) else {
        return;
    };
    let Some(sms) = &holder.sms else { return };
    let user = &holder.user;
    // A text left over from an earlier login that failed half way is not
    // this login's code.
    while shared.inbox.pending(&sms.number) > 0 {
        let _ = shared.inbox.next(&sms.number, Duration::ZERO).await;
    }
    let result = gateway
        .call(Operation::SendCode {
            user: user.clone(),
            channel: Channel::Sms,
        })
        .await;
    let got = Instant::now();
    shared.record(part, |r| r.request(Op::SendCode, due, got));
    let expires_in = match result {
        Ok(Reply::CodeSent { expires_in, .. }) => expires_in,
        other => return shared.error(part, Op::SendCode, &other, got),
    };
    let Some(text) = shared.inbox.next(&sms.number, expires_in).await else {
        return shared.violation(format!(
            "{user}: the code sent to {:?} never arrived",
            sms.number
        ));
    };
    let Some(code) = text.code() else {
        return shared.violation(format!("{user}: a text without a code"));
    };
    let sent = Instant::now();
    let result = gateway
        .call(Operation::VerifyCode {
            user: user.clone(),
            code: Answer::new(&code),
        })
        .await;
    let got = Instant::now();
    shared.record(part, |r| r.request(Op::VerifyCode, sent, got));
    let verdict = match result {
        Ok(Reply::Verdict(verdict)) => verdict,
        other => return shared.error(part, Op::VerifyCode, &other, got),
    };
    shared.record(part, |r| r.verdict(verdict_name(&verdict)));
    match verdict {
        Verdict::Accepted {
            user: named,
            device,
            kind: DeviceKind::Sms,
        } if named == *user && device == sms.device => {
            shared.record(part, |r| r.login(Flow::Sms, due, got));
        }
        other => shared.violation(format!(
            "{user}: the code the phone received was refused: {other:?}"
        )),
    }
}

/// A push login: push, show the number, the phone approves, await.
async fn push_login(shared: &Shared, gateway: &Pipeline, part: usize, member: usize, due: Instant) {
    let Some(holder) = shared.members.get(member) else {
        return;
    };
    let Some(device) = holder.push else { return };
    let user = &holder.user;
    let result = gateway
        .call(Operation::Push {
            user: user.clone(),
            device,
        })
        .await;
    let got = Instant::now();
    shared.record(part, |r| r.request(Op::Push, due, got));
    let (push, match_number, expires_in) = match result {
        Ok(Reply::PushSent {
            push,
            match_number,
            expires_in,
        }) => (push, match_number, expires_in),
        other => return shared.error(part, Op::Push, &other, got),
    };
    shared.matcher.shown(push, match_number);
    let sent = Instant::now();
    let result = gateway.call(Operation::AwaitPush { push }).await;
    let got = Instant::now();
    shared.record(part, |r| r.request(Op::AwaitPush, sent, got));
    let verdict = match result {
        Ok(Reply::Verdict(verdict)) => verdict,
        other => return shared.error(part, Op::AwaitPush, &other, got),
    };
    shared.record(part, |r| r.verdict(verdict_name(&verdict)));
    match verdict {
        Verdict::Accepted {
            user: named,
            device: by,
            kind: DeviceKind::IbKey,
        } if named == *user && by == device => {
            shared.record(part, |r| r.login(Flow::Push, due, got));
        }
        // The phone approves every push with the shown number at once.
        refused if got < sent + expires_in => shared.violation(format!(
            "{user}: the push the phone approved was refused: {refused:?}"
        )),
        _ => {}
    }
}

/// One legitimate login of member `member`, due at `due`; `pick` chooses
/// among the user's devices. With `amount` (cents) it confirms a
/// withdrawal: `AuthorizeWithdrawal` instead of `Verify`.
async fn login(
    shared: &Shared,
    (gateway, verifier): (&Pipeline, &Pipeline),
    part: usize,
    (member, amount): (usize, Option<u64>),
    pick: usize,
    due: Instant,
) {
    let Some(holder) = shared.members.get(member) else {
        return;
    };
    let user = &holder.user;
    let result = gateway
        .call(Operation::Devices { user: user.clone() })
        .await;
    let got = Instant::now();
    shared.record(part, |r| r.request(Op::Devices, due, got));
    let listed = match result {
        Ok(Reply::Devices { devices, .. }) => devices,
        other => return shared.error(part, Op::Devices, &other, got),
    };
    // As a login page would: offer the devices that are not locked out (a
    // lockout left by an earlier attack is not this login's failure).
    let usable: Vec<&(DeviceId, EmulatedDevice)> = holder
        .devices
        .iter()
        .filter(|(id, _)| {
            listed
                .iter()
                .any(|entry| entry.device == *id && entry.locked_for.is_zero())
        })
        .collect();
    if usable.is_empty() {
        let kind = if listed.iter().any(|entry| !entry.locked_for.is_zero()) {
            "devices: every device locked out"
        } else {
            "devices: none of the fleet's listed"
        };
        return shared.record(part, |r| r.error(kind.into(), got));
    }
    // A time token or app whose code of this step was used shows nothing
    // new until the next step: its holder waits (the login is not made).
    let now = unix_secs();
    let ready: Vec<_> = usable.into_iter().filter(|(_, d)| d.ready(now)).collect();
    let Some(&(device, emulated)) = ready.get(pick % ready.len().max(1)) else {
        return;
    };
    let device = *device;

    let asked = Instant::now();
    let result = gateway
        .call(Operation::Challenge {
            user: user.clone(),
            device,
        })
        .await;
    let got = Instant::now();
    shared.record(part, |r| r.request(Op::Challenge, asked, got));
    let (challenge, text, expires_in) = match result {
        Ok(Reply::Challenge {
            challenge,
            text,
            expires_in,
        }) => (challenge, text, expires_in),
        other => return shared.error(part, Op::Challenge, &other, got),
    };
    let Ok(code) = emulated.answer(&text, unix_secs()) else {
        return shared.violation(format!(
            "{user}: device {device} ({}) was sent a challenge it cannot show: {}",
            emulated.kind(),
            shown(&text)
        ));
    };
    let answer = Answer::new(code.as_str());

    let sent = Instant::now();
    let (op, flow, result) = match amount {
        None => {
            let verify = Operation::Verify {
                challenge,
                response: answer.clone(),
            };
            (Op::Verify, Flow::Login, verifier.call(verify).await)
        }
        Some(amount_cents) => {
            let withdraw = Operation::AuthorizeWithdrawal {
                user: user.clone(),
                amount_cents,
                challenge,
                response: answer.clone(),
            };
            (
                Op::AuthorizeWithdrawal,
                Flow::Withdrawal,
                verifier.call(withdraw).await,
            )
        }
    };
    let got = Instant::now();
    shared.record(part, |r| r.request(op, sent, got));
    let verdict = match result {
        Ok(Reply::Verdict(verdict)) => verdict,
        // The answer was accepted; the amount decided the rest.
        Ok(Reply::WithdrawalApproved {
            device: by, kind, ..
        }) => Verdict::Accepted {
            user: user.clone(),
            device: by,
            kind,
        },
        Ok(Reply::OverLimit { device_kind, .. }) => {
            shared.record(part, |r| r.verdict("over_limit"));
            Verdict::Accepted {
                user: user.clone(),
                device,
                kind: device_kind,
            }
        }
        other => return shared.error(part, op, &other, got),
    };
    shared.record(part, |r| r.verdict(verdict_name(&verdict)));
    match verdict {
        Verdict::Accepted {
            user: named,
            device: by,
            ..
        } if named == *user && by == device => {
            shared.record(part, |r| r.login(flow, due, got));
            let mut observed = lock(&shared.observed);
            if observed.len() == OBSERVED {
                observed.pop_front();
            }
            observed.push_back((challenge, answer));
        }
        Verdict::Accepted {
            user: named,
            device: by,
            ..
        } => shared.violation(format!(
            "{user}'s login on device {device} was accepted as {named}'s on device {by}"
        )),
        // Answered in time: it had to be accepted.
        refused if got < asked + expires_in => shared.violation(format!(
            "{user}: the right answer on device {device} ({}) was refused: {refused:?}",
            emulated.kind()
        )),
        _ => {}
    }
}

/// A challenge as the login page shows it (challenges are not secret).
pub(crate) fn shown(text: &ChallengeText) -> String {
    match text {
        ChallengeText::Question(q) => q.clone(),
        ChallengeText::CardPositions(a, b) => format!("positions {a} and {b}"),
        ChallengeText::EnterCode => "enter your code".to_owned(),
    }
}
