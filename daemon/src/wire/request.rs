//! Requests: what gateways and operators ask.

use std::fmt;

use zeroize::Zeroizing;

use super::DecodeError;
use super::codec::{Put, Reader};
use crate::identity::{ChallengeId, DeviceId, Username};
use crate::otp::{MAX_CODE_LEN, SecretKey};
use crate::profile::DeviceKind;

/// The longest device label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;
/// The longest PIN, in characters.
pub const MAX_PIN_LEN: usize = 16;

/// One request: the client's id for it, and the operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    pub operation: Operation,
}

/// Operations, by the role that may call them.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    // Gateway role.
    /// The user's active devices, for the "select a device" list.
    Devices { user: Username },
    /// Open a challenge for one of the user's devices.
    Challenge { user: Username, device: DeviceId },
    /// Check the answer to an open challenge.
    Verify {
        challenge: ChallengeId,
        response: Answer,
    },
    // Admin role.
    /// Register a device for a user.
    Enroll(EnrollRequest),
    /// Withdraw a device for good.
    Revoke { device: DeviceId },
    /// Every device of a user, with its state.
    ListDevices { user: Username },
    /// Clear lockouts of a user (one device, or all).
    Unlock {
        user: Username,
        device: Option<DeviceId>,
    },
    /// Counters of the running service.
    Stats,
}

impl Operation {
    /// The operation code on the wire.
    pub fn code(&self) -> u8 {
        match self {
            Self::Devices { .. } => 0x01,
            Self::Challenge { .. } => 0x02,
            Self::Verify { .. } => 0x03,
            Self::Enroll(_) => 0x20,
            Self::Revoke { .. } => 0x21,
            Self::ListDevices { .. } => 0x22,
            Self::Unlock { .. } => 0x23,
            Self::Stats => 0x24,
        }
    }

    /// The name used in metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Devices { .. } => "devices",
            Self::Challenge { .. } => "challenge",
            Self::Verify { .. } => "verify",
            Self::Enroll(_) => "enroll",
            Self::Revoke { .. } => "revoke",
            Self::ListDevices { .. } => "list_devices",
            Self::Unlock { .. } => "unlock",
            Self::Stats => "stats",
        }
    }

    /// Whether the gateway role may call it (the rest are admin's).
    pub fn is_gateway(&self) -> bool {
        self.code() < 0x20
    }
}

/// What an operator enrols.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollRequest {
    pub user: Username,
    pub kind: DeviceKind,
    /// The device's key; `None` asks sls to generate one (returned once).
    pub secret: Option<SecretKey>,
    /// The PIN of devices whose suite binds one (DSC+, legacy DSC).
    pub pin: Option<Pin>,
    pub label: String,
}

/// A typed answer to a challenge: wiped on drop, never printed.
#[derive(Clone, PartialEq)]
pub struct Answer(Zeroizing<String>);

impl Answer {
    pub fn new(text: &str) -> Self {
        Self(Zeroizing::new(text.to_owned()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Answer({} bytes)", self.0.len())
    }
}

/// A device PIN: wiped on drop, never printed.
#[derive(Clone, PartialEq)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    pub fn new(text: &str) -> Self {
        Self(Zeroizing::new(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(..)")
    }
}

impl Request {
    /// Parses a frame body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let id = r.u64("request id")?;
        let code = r.u8("operation")?;
        let operation = match code {
            0x01 => Operation::Devices {
                user: user(&mut r)?,
            },
            0x02 => Operation::Challenge {
                user: user(&mut r)?,
                device: DeviceId(r.u64("device")?),
            },
            0x03 => Operation::Verify {
                challenge: ChallengeId(r.u64("challenge id")?),
                response: {
                    let text = r.str("response")?;
                    if text.len() > MAX_CODE_LEN {
                        return Err(DecodeError::invalid(
                            "response",
                            format!("longer than {MAX_CODE_LEN} bytes"),
                        ));
                    }
                    Answer::new(text)
                },
            },
            0x20 => Operation::Enroll(enroll(&mut r)?),
            0x21 => Operation::Revoke {
                device: DeviceId(r.u64("device")?),
            },
            0x22 => Operation::ListDevices {
                user: user(&mut r)?,
            },
            0x23 => Operation::Unlock {
                user: user(&mut r)?,
                device: match r.u64("device")? {
                    0 => None,
                    id => Some(DeviceId(id)),
                },
            },
            0x24 => Operation::Stats,
            other => return Err(DecodeError::UnknownOperation(other)),
        };
        r.finish()?;
        Ok(Self { id, operation })
    }

    /// Appends this request's body (without the length prefix).
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u64(self.id);
        out.put_u8(self.operation.code());
        match &self.operation {
            Operation::Devices { user } | Operation::ListDevices { user } => {
                out.put_bytes(user.as_str().as_bytes());
            }
            Operation::Challenge { user, device } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(device.0);
            }
            Operation::Verify {
                challenge,
                response,
            } => {
                out.put_u64(challenge.0);
                out.put_bytes(response.as_bytes());
            }
            Operation::Enroll(e) => {
                out.put_bytes(e.user.as_str().as_bytes());
                out.put_u8(e.kind.code());
                out.put_bytes(e.secret.as_ref().map_or(&[], SecretKey::expose_secret));
                out.put_bytes(e.pin.as_ref().map_or("", Pin::as_str).as_bytes());
                out.put_bytes(e.label.as_bytes());
            }
            Operation::Revoke { device } => out.put_u64(device.0),
            Operation::Unlock { user, device } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(device.map_or(0, |d| d.0));
            }
            Operation::Stats => {}
        }
    }

    /// This request as a whole frame.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        super::write_frame(&mut out, |body| self.encode_body(body));
        out
    }
}

fn user(r: &mut Reader<'_>) -> Result<Username, DecodeError> {
    Username::new(r.str("user")?).map_err(|e| DecodeError::invalid("user", e.to_string()))
}

fn enroll(r: &mut Reader<'_>) -> Result<EnrollRequest, DecodeError> {
    let user = user(r)?;
    let kind_code = r.u8("kind")?;
    let kind = DeviceKind::from_code(kind_code)
        .ok_or_else(|| DecodeError::invalid("kind", format!("unknown device kind {kind_code}")))?;
    let secret = match r.bytes("secret")? {
        [] => None,
        bytes => Some(
            SecretKey::from_bytes(bytes.to_vec())
                .map_err(|e| DecodeError::invalid("secret", e.to_string()))?,
        ),
    };
    let pin = match r.str("pin")? {
        "" => None,
        text if text.chars().count() > MAX_PIN_LEN => {
            return Err(DecodeError::invalid(
                "pin",
                format!("longer than {MAX_PIN_LEN} characters"),
            ));
        }
        text => Some(Pin::new(text)),
    };
    let label = r.str("label")?;
    if label.len() > MAX_LABEL_LEN {
        return Err(DecodeError::invalid(
            "label",
            format!("longer than {MAX_LABEL_LEN} bytes"),
        ));
    }
    Ok(EnrollRequest {
        user,
        kind,
        secret,
        pin,
        label: label.to_owned(),
    })
}
