//! Writing a response body: the server's side.

use std::time::Duration;

use super::{
    ActivationRoute, ChallengeText, DeliveryState, DeviceStatus, Reply, Response, Verdict,
};
use crate::identity::Username;
use crate::otp::SecretKey;
use crate::wire::codec::Put;

impl Response {
    /// Appends this response's body (without the length prefix).
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u64(self.id);
        out.put_u8(self.reply.tag());
        match &self.reply {
            Reply::Devices { required, devices } => {
                out.put_u8(u8::from(*required));
                let count = u16::try_from(devices.len()).unwrap_or(u16::MAX);
                out.put_u16(count);
                for d in devices.iter().take(usize::from(count)) {
                    out.put_u64(d.device.0);
                    out.put_u8(d.kind.code());
                    out.put_bytes(d.label.as_bytes());
                    out.put_u64(millis(d.locked_for));
                    match d.status {
                        DeviceStatus::Active => out.put_u8(0),
                        DeviceStatus::Expired => out.put_u8(1),
                        DeviceStatus::Ordered => out.put_u8(2),
                        DeviceStatus::Shipped { activates_at } => {
                            out.put_u8(3);
                            out.put_u64(activates_at.0);
                        }
                        DeviceStatus::Suspended => out.put_u8(4),
                        DeviceStatus::Pending => out.put_u8(5),
                    }
                    out.put_bytes(d.owner.as_ref().map_or("", Username::as_str).as_bytes());
                }
            }
            Reply::WithdrawalApproved {
                device,
                kind,
                remaining_today,
                remaining_5d,
            } => {
                out.put_u64(device.0);
                out.put_u8(kind.code());
                out.put_u64(remaining_today.unwrap_or(u64::MAX));
                out.put_u64(remaining_5d.unwrap_or(u64::MAX));
            }
            Reply::OverLimit {
                device_kind,
                remaining_today,
                remaining_5d,
                kinds_that_allow,
            } => {
                out.put_u8(device_kind.code());
                out.put_u64(remaining_today.unwrap_or(u64::MAX));
                out.put_u64(remaining_5d.unwrap_or(u64::MAX));
                let count = u8::try_from(kinds_that_allow.len()).unwrap_or(u8::MAX);
                out.put_u8(count);
                for kind in kinds_that_allow.iter().take(usize::from(count)) {
                    out.put_u8(kind.code());
                }
            }
            Reply::Refused { reason, message } => {
                out.put_u8(reason.code());
                out.put_bytes(message.as_bytes());
            }
            Reply::Share { share, active } => {
                out.put_u64(share.0);
                out.put_u8(u8::from(*active));
            }
            Reply::Shares(shares) => {
                let count = u16::try_from(shares.len()).unwrap_or(u16::MAX);
                out.put_u16(count);
                for s in shares.iter().take(usize::from(count)) {
                    out.put_u64(s.share.0);
                    out.put_bytes(s.requesting_user.as_str().as_bytes());
                    out.put_bytes(s.owner_user.as_str().as_bytes());
                    out.put_u64(s.device.0);
                    out.put_u8(u8::from(s.active));
                }
            }
            Reply::TemporaryCode {
                device,
                code,
                expires_in,
                uses,
            } => {
                out.put_u64(device.0);
                out.put_bytes(code.as_bytes());
                out.put_u64(millis(*expires_in));
                out.put_u16(*uses);
            }
            Reply::PendingActivations(pending) => {
                let count = u16::try_from(pending.len()).unwrap_or(u16::MAX);
                out.put_u16(count);
                for p in pending.iter().take(usize::from(count)) {
                    out.put_u64(p.device.0);
                    out.put_bytes(p.user.as_str().as_bytes());
                    out.put_u64(p.replaces.0);
                    out.put_u64(p.shipped_at.0);
                    out.put_u64(p.activates_at.0);
                }
            }
            Reply::TokensImported {
                import,
                count,
                committed,
            } => {
                out.put_u64(*import);
                out.put_u64(*count);
                out.put_u8(u8::from(*committed));
            }
            Reply::Erased {
                pseudonym,
                devices,
                audit_entries,
            } => {
                out.put_bytes(pseudonym.as_str().as_bytes());
                out.put_u64(*devices);
                out.put_u64(*audit_entries);
            }
            Reply::Keyring {
                active,
                retiring,
                resealed,
            } => {
                out.put_u64(u64::from(*active));
                out.put_u16(u16::try_from(retiring.len()).unwrap_or(u16::MAX));
                for id in retiring.iter().take(usize::from(u16::MAX)) {
                    out.put_u64(u64::from(*id));
                }
                out.put_u64(*resealed);
            }
            Reply::Upgrade {
                format,
                release,
                nodes,
                behind,
            } => {
                out.put_u64(*format);
                out.put_u64(*release);
                out.put_u16(*nodes);
                out.put_u16(*behind);
            }
            Reply::BackedUp {
                path,
                bytes,
                devices,
                rows,
                last_audit,
                took,
            } => {
                out.put_bytes(path.as_bytes());
                out.put_u64(*bytes);
                out.put_u64(*devices);
                out.put_u64(*rows);
                out.put_u64(*last_audit);
                out.put_u64(millis(*took));
            }
            Reply::TokensRetired { retired, last } => {
                out.put_u64(*retired);
                out.put_bytes(last.as_ref().map_or("", |s| s.as_str()).as_bytes());
            }
            Reply::Tokens(tokens) => {
                let count = u16::try_from(tokens.len()).unwrap_or(u16::MAX);
                out.put_u16(count);
                for token in tokens.iter().take(usize::from(count)) {
                    token.put(out);
                }
            }
            Reply::Audit(entries) => {
                let count = u16::try_from(entries.len()).unwrap_or(u16::MAX);
                out.put_u16(count);
                for e in entries.iter().take(usize::from(count)) {
                    out.put_u64(e.seq);
                    out.put_u64(e.at.0);
                    out.put_bytes(e.actor.as_bytes());
                    out.put_bytes(e.action.as_bytes());
                    out.put_bytes(e.user.as_ref().map_or("", Username::as_str).as_bytes());
                    out.put_u64(e.device.map_or(0, |d| d.0));
                    out.put_bytes(e.detail.as_bytes());
                }
            }
            Reply::Challenge {
                challenge,
                text,
                expires_in,
            } => {
                out.put_u64(challenge.0);
                put_challenge_text(out, text);
                out.put_u64(millis(*expires_in));
            }
            Reply::ActivationStarted {
                activation,
                route,
                expires_in,
            } => {
                out.put_u64(activation.0);
                match route {
                    ActivationRoute::Sms => out.put_u8(1),
                    ActivationRoute::Device { device, text } => {
                        out.put_u8(2);
                        out.put_u64(device.0);
                        put_challenge_text(out, text);
                    }
                    ActivationRoute::DeviceAndSms { device, text } => {
                        out.put_u8(3);
                        out.put_u64(device.0);
                        put_challenge_text(out, text);
                    }
                }
                out.put_u64(millis(*expires_in));
            }
            Reply::VerificationSent { expires_in } => out.put_u64(millis(*expires_in)),
            Reply::PhoneConfirmed { sms_device } => out.put_u64(sms_device.map_or(0, |d| d.0)),
            Reply::Activated {
                user,
                device,
                secret,
                replaced,
            } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(device.0);
                out.put_bytes(secret.expose_secret());
                out.put_u64(replaced.map_or(0, |d| d.0));
            }
            Reply::Verdict(verdict) => match verdict {
                Verdict::Accepted { user, device, kind } => {
                    out.put_u8(0);
                    out.put_bytes(user.as_str().as_bytes());
                    out.put_u64(device.0);
                    out.put_u8(kind.code());
                }
                Verdict::Rejected { attempts_left } => {
                    out.put_u8(1);
                    out.put_u8(*attempts_left);
                }
                Verdict::Expired => out.put_u8(2),
                Verdict::LockedOut { retry_after } => {
                    out.put_u8(3);
                    out.put_u64(millis(*retry_after));
                }
                Verdict::UnknownChallenge => out.put_u8(4),
                Verdict::Denied => out.put_u8(5),
            },
            Reply::CodeSent {
                code,
                expires_in,
                resend_after,
            } => {
                out.put_u64(code.0);
                out.put_u64(millis(*expires_in));
                out.put_u64(millis(*resend_after));
            }
            Reply::CodeStatus {
                channel,
                sends,
                delivery,
            } => {
                out.put_u8(channel.code());
                out.put_u8(*sends);
                match delivery {
                    DeliveryState::Pending => out.put_u8(0),
                    DeliveryState::Delivered => out.put_u8(1),
                    DeliveryState::Failed { reason } => {
                        out.put_u8(2);
                        out.put_bytes(reason.as_bytes());
                    }
                }
            }
            Reply::PushSent {
                push,
                match_number,
                expires_in,
            } => {
                out.put_u64(push.0);
                out.put_u8(*match_number);
                out.put_u64(millis(*expires_in));
            }
            Reply::Subscribed => {}
            Reply::Message {
                message,
                to,
                channel,
                text,
            } => {
                out.put_u64(message.0);
                out.put_bytes(to.to_string().as_bytes());
                out.put_u8(channel.code());
                out.put_bytes(text.as_bytes());
            }
            Reply::PushNotice {
                push,
                user,
                device,
                expires_in,
            } => {
                out.put_u64(push.0);
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(device.0);
                out.put_u64(millis(*expires_in));
            }
            Reply::Enrolled { device, secret } => {
                out.put_u64(device.0);
                out.put_bytes(secret.as_ref().map_or(&[], SecretKey::expose_secret));
            }
            Reply::AppEnrolled { device, uri } => {
                out.put_u64(device.0);
                out.put_bytes(uri.as_str().as_bytes());
            }
            Reply::Done => {}
            Reply::Stats(stats) => {
                let count = u16::try_from(stats.len()).unwrap_or(u16::MAX);
                out.put_u16(count);
                for s in stats.iter().take(usize::from(count)) {
                    out.put_bytes(s.name.as_bytes());
                    out.put_u64(s.value);
                }
            }
            Reply::Error {
                code,
                retry_after,
                message,
            } => {
                out.put_u16(code.code());
                out.put_u64(millis(*retry_after));
                out.put_bytes(message.as_bytes());
            }
        }
    }

    /// This response as a whole frame.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        crate::wire::write_frame(&mut out, |body| self.encode_body(body));
        out
    }
}

/// Durations travel as whole milliseconds.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn put_challenge_text(out: &mut Vec<u8>, text: &ChallengeText) {
    match text {
        ChallengeText::Question(q) => {
            out.put_u8(1);
            out.put_bytes(q.as_bytes());
        }
        ChallengeText::CardPositions(a, b) => {
            out.put_u8(2);
            out.put_u16(*a);
            out.put_u16(*b);
        }
        ChallengeText::EnterCode => out.put_u8(3),
    }
}
