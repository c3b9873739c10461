//! Challenge/response on the embedded store: a challenge is asked under
//! its device's failure lock and kept in the sharded challenge table; its
//! answer is decided by `rules::verify` under the table's shard lock. The
//! cluster's are in `cluster`; the decisions are the same functions.

use std::sync::atomic::Ordering;

use rand::CryptoRng;

use super::{Engine, Outcome, ready, rules};
use crate::clock::Timestamp;
use crate::events::{self, Category, Event};
use crate::identity::{ChallengeId, DeviceId, Username};
use crate::ratelimit::Decision;
use crate::store::embedded::challenges::InsertError;
use crate::store::{Device, DeviceLife, Disposition};
use crate::wire::request::Answer;
use crate::wire::{ErrorCode, Reply, Verdict};

impl Engine {
    /// One issuance (challenge, code, push, token) for `user`, from their
    /// own limiter if they have devices.
    pub(super) fn issuance(&self, user: &Username, now: Timestamp) -> Decision {
        let enrolled = self.registry.has_devices(user);
        let rate = self.config().challenges.issuance_rate();
        self.user_limits.check(rate, user, enrolled, now)
    }

    /// Counts a lockout and tells the security event stream: the failure
    /// after which `user`'s `device` locked.
    pub(super) fn count_lockout(&self, user: &Username, device: DeviceId, now: Timestamp) {
        self.counters.lockouts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::LOCKOUTS).increment(1);
        let failed = events::Outcome::Failure;
        events::emit(|| {
            Event::new(now, "device-locked", Category::Authentication, failed)
                .user(user)
                .device(device)
                .reason("the failure after which the device locks")
        });
    }

    pub(super) fn challenge<R: CryptoRng + ?Sized>(
        &self,
        user: &Username,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Outcome {
        if let Decision::Deny { retry_after } = self.issuance(user, now) {
            return Reply::rate_limited(retry_after, "too many challenges for this user").into();
        }
        // An unknown user and another user's device answer the same way. A
        // shipped replacement may be challenged before it activates itself:
        // the right answer activates it.
        let shipped = || {
            self.registry.device(device).filter(|d| {
                &d.user == user
                    && !d.expired_at(now)
                    && rules::devices::awaits_first_answer(&d.life())
            })
        };
        let Some(device) = self.login_device(user, device, now).or_else(shipped) else {
            let expired = self
                .registry
                .device(device)
                .is_some_and(|d| &d.user == user && d.expired_at(now));
            return Reply::error(
                ErrorCode::NotFound,
                if expired {
                    "the device's validity has ended"
                } else {
                    "no such device for this user, or it cannot be used now"
                },
            )
            .into();
        };
        let ttl = self.config().challenges.ttl;
        let mut persist = None;
        // Ids are random 64-bit numbers; a collision is retried, twice.
        for _ in 0..3 {
            let id = ChallengeId(rng.next_u64());
            let asked = match self.ask(user, &device, id, now, rng) {
                Ok(asked) => asked,
                Err(refusal) => {
                    return Outcome {
                        reply: refusal,
                        persist,
                        booking: None,
                    };
                }
            };
            persist = persist.or(asked.charged.then_some(device.id));
            if asked.locked {
                self.count_lockout(user, device.id, now);
            }
            // After the device's locks are released (the table's shard lock
            // comes first in `verify`): the replaced challenge could no
            // longer be accepted anyway, this only frees its slot.
            if let Some(old) = asked.superseded {
                // Only if it is this device's (an id that collided was never
                // stored as ours).
                self.challenges.resolve(old, |open| {
                    let ours = open.device == device.id;
                    (
                        (),
                        if ours {
                            Disposition::Remove
                        } else {
                            Disposition::Keep
                        },
                    )
                });
            }
            let text = rules::ask::shown(&asked.open.question);
            let reply = match self.challenges.insert(id, asked.open) {
                Ok(()) => {
                    self.counters.issued.fetch_add(1, Ordering::Relaxed);
                    Reply::Challenge {
                        challenge: id,
                        text,
                        expires_in: ttl,
                    }
                }
                Err(InsertError::Taken) => continue,
                Err(InsertError::Full) => {
                    Reply::error(ErrorCode::TooManyChallenges, "the challenge table is full")
                }
            };
            return Outcome {
                reply,
                persist,
                booking: None,
            };
        }
        Outcome {
            reply: Reply::error(ErrorCode::Busy, "could not allocate a challenge id"),
            persist,
            booking: None,
        }
    }

    /// Asks `device` the question of a new challenge `id` under its
    /// failure lock.
    pub(super) fn ask<R: CryptoRng + ?Sized>(
        &self,
        user: &Username,
        device: &Device,
        id: ChallengeId,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<rules::ask::Asked, Reply> {
        let mut failures = device.failures();
        let mut questions = device.questions(&failures);
        rules::ask::ask_device(
            &self.config(),
            &self.alphabets,
            user,
            device,
            &mut failures,
            &mut questions,
            id,
            now,
            rng,
        )
    }

    pub(super) fn verify<R: CryptoRng + ?Sized>(
        &self,
        id: ChallengeId,
        answer: &Answer,
        now: Timestamp,
        rng: &mut R,
    ) -> Outcome {
        self.verify_with(id, answer, None, now, rng)
    }

    /// `Verify`, or with a PIN on `trial` (a PIN change).
    pub(super) fn verify_with<R: CryptoRng + ?Sized>(
        &self,
        id: ChallengeId,
        answer: &Answer,
        trial: Option<&rules::verify::PinTrial>,
        now: Timestamp,
        rng: &mut R,
    ) -> Outcome {
        let resolved = self.challenges.resolve(id, |open| {
            let Some(device) = self.registry.device(open.device) else {
                let decided = rules::verify::revoked(open, now);
                let life = DeviceLife::default();
                return ((decided.verdict, None, life), decided.challenge);
            };
            let mut failures = device.failures();
            let mut questions = device.questions(&failures);
            let life = device.life();
            let Ok(pin) = rules::verify::pin_for(trial, device.id, &life) else {
                let life = DeviceLife::default();
                return ((Verdict::UnknownChallenge, None, life), Disposition::Keep);
            };
            let decided = rules::verify::decide(
                id,
                open,
                (&device, pin),
                &mut failures,
                &mut questions,
                answer,
                now,
                &self.config(),
            );
            if decided.locked {
                self.count_lockout(&device.user, device.id, now);
            }
            let persist = decided.failures_changed.then_some(device.id);
            ((decided.verdict, persist, life), decided.challenge)
        });
        let (verdict, persist, life) =
            resolved.unwrap_or((Verdict::UnknownChallenge, None, DeviceLife::default()));
        let accepted = self.after_accept(self.registry.as_ref(), verdict, &life, now, rng);
        let verdict = ready(async { Ok(accepted.await) }).unwrap_or(Verdict::UnknownChallenge);
        self.count_verdict(&verdict);
        Outcome {
            reply: Reply::Verdict(verdict),
            persist,
            booking: None,
        }
    }

    pub(super) fn count_verdict(&self, verdict: &Verdict) {
        let counter = match verdict {
            Verdict::Accepted { .. } => &self.counters.accepted,
            Verdict::Rejected { .. } => &self.counters.rejected,
            Verdict::Expired => &self.counters.expired,
            Verdict::LockedOut { .. } => &self.counters.locked_out,
            Verdict::UnknownChallenge | Verdict::Denied => &self.counters.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
