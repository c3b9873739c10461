//! The names things go by: users, devices, challenges, codes, pushes. Parsed once at the
//! edge (wire, admin input) into these types, then trusted.

use std::fmt;

/// The longest username accepted, in bytes.
pub const MAX_USERNAME_LEN: usize = 64;

/// A login name: 1 to 64 characters from `A-Z a-z 0-9 . _ @ -`.
///
/// Gateways pass the name the user typed; sls never says whether it exists.
///
/// Shared, not copied, when cloned: each of a user's devices, the index of
/// devices by user and the user's record hold the same name, ten million
/// times over in a large registry, and a request's clones cost no
/// allocation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Username(std::sync::Arc<str>);

/// A username that breaks the rule above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    #[error("username is empty")]
    Empty,
    #[error("username is {0} bytes, the limit is {MAX_USERNAME_LEN}")]
    TooLong(usize),
    #[error("username has a character outside A-Z a-z 0-9 . _ @ - at byte {0}")]
    Character(usize),
}

impl Username {
    pub fn new(name: &str) -> Result<Self, UsernameError> {
        if name.is_empty() {
            return Err(UsernameError::Empty);
        }
        if name.len() > MAX_USERNAME_LEN {
            return Err(UsernameError::TooLong(name.len()));
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-');
        if let Some(position) = name.bytes().position(|b| !allowed(b)) {
            return Err(UsernameError::Character(position));
        }
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest token serial number accepted, in bytes.
pub const MAX_SERIAL_LEN: usize = 64;

/// A hardware token's serial number as its vendor wrote it (leading zeros
/// kept): 1 to 64 printable ASCII characters, no spaces. Serials order as
/// written, byte by byte: vendors write them at a fixed width, so a range
/// of numbers is a range of serials.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(Box<str>);

/// A serial number that breaks the rule above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    #[error("serial number is empty")]
    Empty,
    #[error("serial number is {0} bytes, the limit is {MAX_SERIAL_LEN}")]
    TooLong(usize),
    #[error("serial number has a space or a character outside printable ASCII at byte {0}")]
    Character(usize),
}

impl Serial {
    pub fn new(serial: &str) -> Result<Self, SerialError> {
        if serial.is_empty() {
            return Err(SerialError::Empty);
        }
        if serial.len() > MAX_SERIAL_LEN {
            return Err(SerialError::TooLong(serial.len()));
        }
        if let Some(position) = serial.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(SerialError::Character(position));
        }
        Ok(Self(serial.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device's number, unique in one deployment; 0 is never assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u64);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Declares a random 64-bit handle: unguessable, printed in hex.
macro_rules! random_handle {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:016x}", self.0)
            }
        }
    )*};
}

random_handle! {
    /// An open challenge's handle: random, so that one gateway cannot guess
    /// another's challenges.
    ChallengeId;
    /// A live SMS/voice code's handle (the code itself is never a handle).
    CodeId;
    /// A push approval session.
    PushId;
    /// One message handed to the carrier channel.
    MessageId;
    /// A request to share a device (pending or in effect).
    ShareId;
    /// An IB Key activation under way (its SMS token or device challenge).
    ActivationId;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_rule() {
        assert!(Username::new("jdoe.1984@corp-x_y").is_ok());
        assert_eq!(Username::new(""), Err(UsernameError::Empty));
        assert_eq!(
            Username::new(&"a".repeat(65)),
            Err(UsernameError::TooLong(65))
        );
        assert!(Username::new(&"a".repeat(64)).is_ok());
        assert_eq!(Username::new("j doe"), Err(UsernameError::Character(1)));
        assert_eq!(Username::new("jdoé"), Err(UsernameError::Character(3)));
    }
}
