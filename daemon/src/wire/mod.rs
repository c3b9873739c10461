//! The wire protocol: frames in, typed requests out, and back. No I/O.
//!
//! A frame is a 4-byte big-endian body length followed by the body. A
//! request body is `request id (u64) | operation (u8) | fields`; a response
//! body is `request id (u64) | reply tag (u8) | fields`. Requests on one
//! stream may be pipelined and their responses may come back in any order;
//! the id pairs them. `PROTOCOL.md` at the repository root is the full
//! description for client authors; the tests check its examples against
//! this code.
//!
//! Decoding is two steps, as in mini-redis: [`split_frame`] finds a whole
//! frame without copying or allocating (or says more bytes are needed), then
//! [`Request::decode`] / [`Response::decode`] parse the body. A body that
//! does not parse gets an error reply and the stream goes on, since framing
//! is intact; a length over the limit cannot be skipped safely and ends
//! reading of the stream.

pub(crate) mod codec;
pub mod request;
mod response;
pub mod token;

pub use request::{
    DeliveryReport, EnrollRequest, Identification, MAX_PAGE, Operation, Page, Request,
};
pub use response::{
    ActivationRoute, AuditRecord, ChallengeText, DeliveryState, DeviceEntry, DeviceStatus,
    ErrorCode, PendingActivation, Refusal, Reply, Response, ShareEntry, StatEntry, Verdict,
};

/// ALPN protocol id of this release's protocol: the protocol and its
/// version.
pub const ALPN: &[u8] = b"sls/1";

/// The protocol versions this release speaks, as ALPN ids, most preferred
/// first. A server picks the first of its own that the client offers, so
/// during a rolling upgrade gateways and nodes of two releases agree on
/// the newest version both speak: a release that changes the frames puts
/// its version in front and keeps the one before it (README: upgrading a
/// cluster).
pub const PROTOCOLS: &[&[u8]] = &[ALPN];

/// [`PROTOCOLS`] as a TLS configuration takes them.
pub fn alpn_protocols() -> Vec<Vec<u8>> {
    PROTOCOLS.iter().map(|id| id.to_vec()).collect()
}

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

/// The largest body any configuration may allow.
pub const MAX_FRAME_LIMIT: u32 = 65_536;

/// Why a body could not be decoded. The stream stays usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body ends inside field {0}")]
    Truncated(&'static str),
    #[error("field {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} bytes follow the last field")]
    TrailingBytes(usize),
    #[error("unknown operation 0x{0:02x}")]
    UnknownOperation(u8),
    #[error("unknown reply tag 0x{0:02x}")]
    UnknownReply(u8),
    #[error("field {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl DecodeError {
    /// A field that parsed but is not acceptable.
    pub(crate) fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            problem: problem.into(),
        }
    }
}

/// Why a stream's framing broke; the stream must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: u32, limit: u32 },
    #[error("frame has an empty body")]
    Empty,
}

/// Finds the first whole frame in `buffer`.
///
/// `Ok(None)`: more bytes are needed. `Ok(Some((body, consumed)))`: the
/// body, and how many bytes of `buffer` the frame took. A length over
/// `max_body` is refused before any of the body arrives.
pub fn split_frame(buffer: &[u8], max_body: u32) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(prefix) = buffer.first_chunk::<LENGTH_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max_body {
        return Err(FrameError::TooLarge {
            len,
            limit: max_body,
        });
    }
    let end = LENGTH_BYTES + len as usize;
    Ok(buffer.get(LENGTH_BYTES..end).map(|body| (body, end)))
}

/// Appends a frame to `out`: the length prefix, then what `body` writes.
pub fn write_frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    body(out);
    let len = u32::try_from(out.len() - start - LENGTH_BYTES).unwrap_or(u32::MAX);
    if let Some(prefix) = out.get_mut(start..start + LENGTH_BYTES) {
        prefix.copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_frame_waits_for_whole_frames() {
        let mut buffer = Vec::new();
        write_frame(&mut buffer, |b| b.extend_from_slice(b"hello"));
        write_frame(&mut buffer, |b| b.extend_from_slice(b"!"));
        for cut in 0..9 {
            assert_eq!(split_frame(&buffer[..cut], 100), Ok(None), "cut at {cut}");
        }
        assert_eq!(split_frame(&buffer, 100), Ok(Some((&b"hello"[..], 9))));
        assert_eq!(split_frame(&buffer[9..], 100), Ok(Some((&b"!"[..], 5))));
    }

    #[test]
    fn oversized_and_empty_frames_break_the_stream() {
        assert_eq!(
            split_frame(&[0, 0, 1, 1], 256),
            Err(FrameError::TooLarge {
                len: 257,
                limit: 256
            })
        );
        // Refused from the prefix alone, before the body is buffered.
        assert!(split_frame(&[0xff, 0xff, 0xff, 0xff], 256).is_err());
        assert_eq!(split_frame(&[0, 0, 0, 0], 256), Err(FrameError::Empty));
    }
}
