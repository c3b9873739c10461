//! The RADIUS packet codec (RFC 2865), with the Message-Authenticator of
//! RFC 3579 §3.2 and the User-Password hiding of RFC 2865 §5.2. Pure:
//! bytes and the shared secret in, typed packets and bytes out; bounded by
//! the protocol's 4096-byte packet, never allocating more than a packet.
//!
//! A request is only trusted after [`Request::authenticate`]: its
//! Message-Authenticator (HMAC-MD5 under the client's shared secret) is
//! required — a request without one is refused, the BlastRADIUS
//! (CVE-2024-3596) mitigation — and the password is revealed only after it
//! verified.

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use zeroize::Zeroizing;

/// The largest packet RFC 2865 §3 allows.
pub const MAX_PACKET: usize = 4096;
/// Code, identifier, length and authenticator.
pub const HEADER: usize = 20;
/// An attribute's value is at most 253 bytes (its length octet counts the
/// type and length too).
pub const MAX_VALUE: usize = 253;
/// A hidden User-Password is 16 to 128 bytes (RFC 2865 §5.2).
pub const MAX_PASSWORD: usize = 128;

/// Packet codes (RFC 2865 §3, RFC 5997 for Status-Server).
pub mod code {
    pub const ACCESS_REQUEST: u8 = 1;
    pub const ACCESS_ACCEPT: u8 = 2;
    pub const ACCESS_REJECT: u8 = 3;
    pub const ACCESS_CHALLENGE: u8 = 11;
    pub const STATUS_SERVER: u8 = 12;
}

/// Attribute types this front end reads or writes.
pub mod attribute {
    pub const USER_NAME: u8 = 1;
    pub const USER_PASSWORD: u8 = 2;
    pub const CHAP_PASSWORD: u8 = 3;
    pub const REPLY_MESSAGE: u8 = 18;
    pub const STATE: u8 = 24;
    pub const PROXY_STATE: u8 = 33;
    pub const EAP_MESSAGE: u8 = 79;
    pub const MESSAGE_AUTHENTICATOR: u8 = 80;
}

const MAC_LEN: usize = 16;

/// Why bytes are not a RADIUS packet this front end can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} bytes is shorter than a RADIUS header")]
    Short(usize),
    #[error("the header says {declared} bytes, {received} arrived")]
    Length { declared: usize, received: usize },
    #[error("the header says {0} bytes: more than RADIUS allows (4096)")]
    TooLong(usize),
    #[error("the attribute at byte {offset} has a bad length")]
    Attribute { offset: usize },
    #[error("Message-Authenticator is missing")]
    NoMessageAuthenticator,
    #[error("Message-Authenticator appears more than once or has a bad length")]
    BadMessageAuthenticator,
}

/// Why an authenticated request's fields cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("User-Password must be 16 to 128 bytes in steps of 16")]
    PasswordLength,
    #[error("{0} appears more than once")]
    Repeated(&'static str),
}

/// Why a reply cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("an attribute value of {0} bytes is longer than 253")]
    ValueTooLong(usize),
    #[error("the packet would be longer than 4096 bytes")]
    TooLong,
}

/// A packet as received: its header, and its attributes checked to lie
/// exactly within its length. Borrowed from the datagram; nothing copied.
#[derive(Clone, Copy)]
pub struct Packet<'a> {
    /// The packet's bytes, exactly its declared length.
    bytes: &'a [u8],
    code: u8,
    identifier: u8,
    authenticator: [u8; 16],
}

impl std::fmt::Debug for Packet<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Attributes may carry a hidden password: only the header.
        f.debug_struct("Packet")
            .field("code", &self.code)
            .field("identifier", &self.identifier)
            .field("length", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Packet<'a> {
    /// Reads a packet. Bytes past its declared length are ignored (RFC
    /// 2865 §3: padding); every attribute must fit exactly.
    pub fn decode(datagram: &'a [u8]) -> Result<Self, DecodeError> {
        let Some((header, _)) = datagram.split_first_chunk::<HEADER>() else {
            return Err(DecodeError::Short(datagram.len()));
        };
        let [code, identifier, high, low, authenticator @ ..] = *header;
        let declared = usize::from(u16::from_be_bytes([high, low]));
        if declared > MAX_PACKET {
            return Err(DecodeError::TooLong(declared));
        }
        if declared < HEADER {
            return Err(DecodeError::Short(declared));
        }
        let Some(bytes) = datagram.get(..declared) else {
            return Err(DecodeError::Length {
                declared,
                received: datagram.len(),
            });
        };
        let packet = Self {
            bytes,
            code,
            identifier,
            authenticator,
        };
        // Every attribute's length checked once, here: the iterator below
        // then never meets a bad one.
        let mut offset = HEADER;
        let mut rest = packet.attribute_bytes();
        while !rest.is_empty() {
            let Some(&[_, length]) = rest.first_chunk::<2>() else {
                return Err(DecodeError::Attribute { offset });
            };
            let length = usize::from(length);
            if length < 2 || length > rest.len() {
                return Err(DecodeError::Attribute { offset });
            }
            rest = rest.get(length..).unwrap_or_default();
            offset += length;
        }
        Ok(packet)
    }

    pub fn code(&self) -> u8 {
        self.code
    }

    pub fn identifier(&self) -> u8 {
        self.identifier
    }

    pub fn authenticator(&self) -> &[u8; 16] {
        &self.authenticator
    }

    /// The packet's bytes (exactly its declared length).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn attribute_bytes(&self) -> &'a [u8] {
        self.bytes.get(HEADER..).unwrap_or_default()
    }

    /// Every attribute in order, as (type, value, offset of the value).
    fn attributes_at(&self) -> impl Iterator<Item = (u8, &'a [u8], usize)> + 'a {
        let mut rest = self.attribute_bytes();
        let mut offset = HEADER;
        std::iter::from_fn(move || {
            let &[kind, length] = rest.first_chunk::<2>()?;
            let length = usize::from(length);
            let value = rest.get(2..length)?;
            rest = rest.get(length..)?;
            let at = offset + 2;
            offset += length;
            Some((kind, value, at))
        })
    }

    /// Every attribute in order, as (type, value).
    pub fn attributes(&self) -> impl Iterator<Item = (u8, &'a [u8])> + 'a {
        self.attributes_at().map(|(kind, value, _)| (kind, value))
    }

    /// The one attribute of `kind`: `None` if absent, an error if repeated.
    pub fn single(&self, kind: u8, name: &'static str) -> Result<Option<&'a [u8]>, FieldError> {
        let mut found = self.attributes().filter(|(k, _)| *k == kind);
        let first = found.next().map(|(_, value)| value);
        match found.next() {
            Some(_) => Err(FieldError::Repeated(name)),
            None => Ok(first),
        }
    }

    /// Checks the Message-Authenticator under `secret` (RFC 3579 §3.2:
    /// HMAC-MD5 over the packet with the attribute's value as zeros),
    /// in constant time. It must be present, once, 16 bytes long.
    pub fn authenticate(self, secret: &'a [u8]) -> Result<Request<'a>, AuthError> {
        let mut found = self
            .attributes_at()
            .filter(|(kind, _, _)| *kind == attribute::MESSAGE_AUTHENTICATOR);
        let (_, value, at) = found.next().ok_or(AuthError::Missing)?;
        if found.next().is_some() || value.len() != MAC_LEN {
            return Err(AuthError::Malformed);
        }
        let mut mac = hmac_md5(secret);
        mac.update(self.bytes.get(..at).unwrap_or_default());
        mac.update(&[0; MAC_LEN]);
        mac.update(self.bytes.get(at + MAC_LEN..).unwrap_or_default());
        mac.verify_slice(value).map_err(|_| AuthError::Mismatch)?;
        Ok(Request {
            packet: self,
            secret,
        })
    }
}

/// Why a request's Message-Authenticator was not accepted; each is a
/// silent drop, counted by its own label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no Message-Authenticator")]
    Missing,
    #[error("Message-Authenticator repeated or of a bad length")]
    Malformed,
    #[error("Message-Authenticator does not verify under the client's secret")]
    Mismatch,
}

impl AuthError {
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "no_message_authenticator",
            Self::Malformed | Self::Mismatch => "bad_message_authenticator",
        }
    }
}

/// A packet whose Message-Authenticator verified under its client's secret.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    packet: Packet<'a>,
    secret: &'a [u8],
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("packet", &self.packet)
            .finish_non_exhaustive()
    }
}

/// The bytes of a request whose Message-Authenticator verified, owned
/// (for the task that answers it after the datagram buffer is reused).
/// Only [`Request::to_verified`] makes one.
#[derive(Clone)]
pub struct Verified(Vec<u8>);

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verified({} bytes)", self.0.len())
    }
}

impl Verified {
    /// The request again, with the secret of the client it verified under
    /// (for its password and its reply); `None` only if the bytes no longer
    /// parse, which they always do.
    pub fn request<'s>(&'s self, secret: &'s [u8]) -> Option<Request<'s>> {
        let packet = Packet::decode(&self.0).ok()?;
        Some(Request { packet, secret })
    }
}

impl<'a> Request<'a> {
    pub fn packet(&self) -> &Packet<'a> {
        &self.packet
    }

    /// Its bytes, owned, still known to be verified.
    pub fn to_verified(&self) -> Verified {
        Verified(self.packet.bytes().to_vec())
    }

    /// The User-Password, revealed (RFC 2865 §5.2) with its trailing
    /// zero padding removed; empty when the request has none. Wiped on drop.
    pub fn password(&self) -> Result<Zeroizing<Vec<u8>>, FieldError> {
        let Some(hidden) = self
            .packet
            .single(attribute::USER_PASSWORD, "User-Password")?
        else {
            return Ok(Zeroizing::new(Vec::new()));
        };
        if hidden.is_empty() || hidden.len() > MAX_PASSWORD || hidden.len() % 16 != 0 {
            return Err(FieldError::PasswordLength);
        }
        let mut clear = Zeroizing::new(Vec::with_capacity(hidden.len()));
        let mut previous: &[u8] = self.packet.authenticator();
        for block in hidden.chunks(16) {
            let pad = Md5::new()
                .chain_update(self.secret)
                .chain_update(previous)
                .finalize();
            clear.extend(block.iter().zip(pad.iter()).map(|(c, p)| c ^ p));
            previous = block;
        }
        while clear.last() == Some(&0) {
            clear.pop();
        }
        Ok(clear)
    }

    /// Encodes the reply `code` with `attributes` (in order, after the
    /// Message-Authenticator, which goes first), then the request's
    /// Proxy-State attributes in order (RFC 2865 §5.33), signed for this
    /// request: Message-Authenticator, then the Response Authenticator.
    pub fn reply(&self, code: u8, attributes: &[(u8, &[u8])]) -> Result<Vec<u8>, EncodeError> {
        let proxy_states = self
            .packet
            .attributes()
            .filter(|(kind, _)| *kind == attribute::PROXY_STATE);
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&[code, self.packet.identifier(), 0, 0]);
        out.extend_from_slice(self.packet.authenticator());
        out.extend_from_slice(&[attribute::MESSAGE_AUTHENTICATOR, 2 + MAC_LEN as u8]);
        out.extend_from_slice(&[0; MAC_LEN]);
        for (kind, value) in attributes.iter().copied().chain(proxy_states) {
            push_attribute(&mut out, kind, value)?;
        }
        set_length(&mut out)?;
        let mut mac = hmac_md5(self.secret);
        mac.update(&out);
        let mac = mac.finalize().into_bytes();
        if let Some(slot) = out.get_mut(HEADER + 2..HEADER + 2 + MAC_LEN) {
            slot.copy_from_slice(&mac);
        }
        // The Response Authenticator: MD5 over the reply with the request's
        // authenticator in place, then the secret (RFC 2865 §3).
        let digest = Md5::new()
            .chain_update(&out)
            .chain_update(self.secret)
            .finalize();
        if let Some(slot) = out.get_mut(4..HEADER) {
            slot.copy_from_slice(&digest);
        }
        Ok(out)
    }
}

fn push_attribute(out: &mut Vec<u8>, kind: u8, value: &[u8]) -> Result<(), EncodeError> {
    let length = u8::try_from(value.len() + 2)
        .ok()
        .filter(|_| value.len() <= MAX_VALUE)
        .ok_or(EncodeError::ValueTooLong(value.len()))?;
    out.push(kind);
    out.push(length);
    out.extend_from_slice(value);
    Ok(())
}

fn set_length(out: &mut [u8]) -> Result<(), EncodeError> {
    let length = u16::try_from(out.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_PACKET)
        .ok_or(EncodeError::TooLong)?;
    if let Some(slot) = out.get_mut(2..4) {
        slot.copy_from_slice(&length.to_be_bytes());
    }
    Ok(())
}

// HMAC accepts keys of any length (RFC 2104 §3); `new_from_slice` cannot
// fail for it.
#[allow(clippy::expect_used)]
fn hmac_md5(secret: &[u8]) -> Hmac<Md5> {
    Hmac::<Md5>::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

/// Builds an Access-Request as a RADIUS client (a NAS) would: for tests,
/// the fuzzer and the simulator's load. The password is hidden under the
/// secret and the request authenticator; a Message-Authenticator is added
/// first unless `sign` is false.
pub fn access_request(
    (identifier, authenticator): (u8, [u8; 16]),
    secret: &[u8],
    password: Option<&[u8]>,
    attributes: &[(u8, &[u8])],
    sign: bool,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[code::ACCESS_REQUEST, identifier, 0, 0]);
    out.extend_from_slice(&authenticator);
    if sign {
        out.extend_from_slice(&[attribute::MESSAGE_AUTHENTICATOR, 2 + MAC_LEN as u8]);
        out.extend_from_slice(&[0; MAC_LEN]);
    }
    for &(kind, value) in attributes {
        push_attribute(&mut out, kind, value)?;
    }
    if let Some(password) = password {
        let hidden = hide_password(password, secret, &authenticator)?;
        push_attribute(&mut out, attribute::USER_PASSWORD, &hidden)?;
    }
    set_length(&mut out)?;
    if sign {
        let mut mac = hmac_md5(secret);
        mac.update(&out);
        let mac = mac.finalize().into_bytes();
        if let Some(slot) = out.get_mut(HEADER + 2..HEADER + 2 + MAC_LEN) {
            slot.copy_from_slice(&mac);
        }
    }
    Ok(out)
}

/// RFC 2865 §5.2, the client's side: the password padded to 16-byte
/// blocks, each XORed with MD5(secret, previous block).
fn hide_password(
    password: &[u8],
    secret: &[u8],
    authenticator: &[u8; 16],
) -> Result<Vec<u8>, EncodeError> {
    if password.len() > MAX_PASSWORD {
        return Err(EncodeError::ValueTooLong(password.len()));
    }
    let blocks = password.len().div_ceil(16).max(1);
    let mut padded = Zeroizing::new(password.to_vec());
    padded.resize(blocks * 16, 0);
    let mut hidden: Vec<u8> = Vec::with_capacity(padded.len());
    for block in padded.chunks(16) {
        let previous = hidden
            .len()
            .checked_sub(16)
            .and_then(|start| hidden.get(start..))
            .unwrap_or(authenticator);
        let pad = Md5::new()
            .chain_update(secret)
            .chain_update(previous)
            .finalize();
        let next: Vec<u8> = block.iter().zip(pad.iter()).map(|(p, k)| p ^ k).collect();
        hidden.extend(next);
    }
    Ok(hidden)
}

/// Checks a reply as a RADIUS client must before believing it: the
/// Response Authenticator for `request`, and the Message-Authenticator,
/// which must be present (and is first when sls wrote the reply).
pub fn verify_reply(reply: &Packet<'_>, request: &Packet<'_>, secret: &[u8]) -> bool {
    if reply.identifier() != request.identifier() {
        return false;
    }
    let bytes = reply.bytes();
    let expected = Md5::new()
        .chain_update(bytes.get(..4).unwrap_or_default())
        .chain_update(request.authenticator())
        .chain_update(bytes.get(HEADER..).unwrap_or_default())
        .chain_update(secret)
        .finalize();
    let authentic: bool =
        subtle::ConstantTimeEq::ct_eq(expected.as_slice(), reply.authenticator().as_slice()).into();
    if !authentic {
        return false;
    }
    // The Message-Authenticator of a reply is computed with the request's
    // authenticator in the header.
    let Some((_, value, at)) = reply
        .attributes_at()
        .find(|(kind, _, _)| *kind == attribute::MESSAGE_AUTHENTICATOR)
    else {
        return false;
    };
    let mut mac = hmac_md5(secret);
    mac.update(bytes.get(..4).unwrap_or_default());
    mac.update(request.authenticator());
    mac.update(bytes.get(HEADER..at).unwrap_or_default());
    mac.update(&[0; MAC_LEN]);
    mac.update(bytes.get(at + MAC_LEN..).unwrap_or_default());
    mac.verify_slice(value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Access-Request as FreeRADIUS's `radclient` 3.2.1 sent it (captured
    /// on a UDP socket): `User-Name = "nemo"`, `User-Password =
    /// "arctangent"`, `Message-Authenticator = 0x00` (radclient fills it),
    /// `Proxy-State = 0x6869`, secret `xyzzy5461` (RFC 2865 §7.1's names).
    const RADCLIENT_REQUEST: &str = "01ff0042f1e803c8dd08aaff73a1e10cc1987d2f01066e656d6f02128c9cc9cec7a3bb633a6e0dd2b92802395012b73de81059f792828c3a73f197e3775921046869";
    const SECRET: &[u8] = b"xyzzy5461";

    fn radclient() -> Vec<u8> {
        hex::decode(RADCLIENT_REQUEST).unwrap()
    }

    #[test]
    fn an_independent_clients_request_authenticates_and_reveals_its_password() {
        let bytes = radclient();
        let packet = Packet::decode(&bytes).unwrap();
        assert_eq!(packet.code(), code::ACCESS_REQUEST);
        assert_eq!(packet.identifier(), 0xff);
        assert_eq!(
            packet.single(attribute::USER_NAME, "User-Name").unwrap(),
            Some(&b"nemo"[..])
        );
        let request = packet.authenticate(SECRET).unwrap();
        assert_eq!(&request.password().unwrap()[..], b"arctangent");
        assert_eq!(
            packet.authenticate(b"xyzzy5462").unwrap_err(),
            AuthError::Mismatch
        );
    }

    #[test]
    fn every_changed_byte_fails_authentication() {
        let bytes = radclient();
        for at in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[at] ^= 0x01;
            if let Ok(packet) = Packet::decode(&changed) {
                assert!(packet.authenticate(SECRET).is_err(), "byte {at}");
            }
        }
    }

    #[test]
    fn a_request_without_or_with_two_message_authenticators_is_refused() {
        let unsigned = access_request(
            (7, [3; 16]),
            SECRET,
            Some(b"x"),
            &[(attribute::USER_NAME, b"nemo")],
            false,
        )
        .unwrap();
        let packet = Packet::decode(&unsigned).unwrap();
        assert_eq!(packet.authenticate(SECRET).unwrap_err(), AuthError::Missing);
        assert_eq!(AuthError::Missing.label(), "no_message_authenticator");
        let twice = access_request(
            (7, [3; 16]),
            SECRET,
            None,
            &[(attribute::MESSAGE_AUTHENTICATOR, &[0; 16])],
            true,
        )
        .unwrap();
        let packet = Packet::decode(&twice).unwrap();
        assert_eq!(
            packet.authenticate(SECRET).unwrap_err(),
            AuthError::Malformed
        );
    }

    #[test]
    fn a_reply_puts_the_message_authenticator_first_copies_proxy_state_and_verifies() {
        let bytes = radclient();
        let packet = Packet::decode(&bytes).unwrap();
        let request = packet.authenticate(SECRET).unwrap();
        let reply = request
            .reply(
                code::ACCESS_CHALLENGE,
                &[
                    (attribute::STATE, b"s1"),
                    (attribute::REPLY_MESSAGE, b"hello"),
                ],
            )
            .unwrap();
        let decoded = Packet::decode(&reply).unwrap();
        assert_eq!(decoded.code(), code::ACCESS_CHALLENGE);
        assert_eq!(decoded.identifier(), 0xff);
        let kinds: Vec<u8> = decoded.attributes().map(|(kind, _)| kind).collect();
        assert_eq!(
            kinds,
            [
                attribute::MESSAGE_AUTHENTICATOR,
                attribute::STATE,
                attribute::REPLY_MESSAGE,
                attribute::PROXY_STATE
            ]
        );
        assert_eq!(
            decoded
                .single(attribute::PROXY_STATE, "Proxy-State")
                .unwrap(),
            Some(&b"hi"[..])
        );
        assert!(verify_reply(&decoded, &packet, SECRET));
        assert!(!verify_reply(&decoded, &packet, b"xyzzy5462"));
        for at in 0..reply.len() {
            let mut changed = reply.clone();
            changed[at] ^= 0x80;
            if let Ok(changed) = Packet::decode(&changed) {
                assert!(!verify_reply(&changed, &packet, SECRET), "byte {at}");
            }
        }
    }

    #[test]
    fn passwords_of_every_length_survive_hiding() {
        for len in [0usize, 1, 15, 16, 17, 31, 32, 100, 128] {
            let password: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let bytes =
                access_request((1, [len as u8; 16]), SECRET, Some(&password), &[], true).unwrap();
            let packet = Packet::decode(&bytes).unwrap();
            let hidden = packet
                .single(attribute::USER_PASSWORD, "User-Password")
                .unwrap()
                .unwrap();
            assert_eq!(hidden.len(), len.div_ceil(16).max(1) * 16);
            if len > 0 {
                assert_ne!(&hidden[..len], &password[..], "hidden, not clear");
            }
            let request = packet.authenticate(SECRET).unwrap();
            assert_eq!(&request.password().unwrap()[..], &password[..]);
        }
        assert_eq!(
            access_request((1, [0; 16]), SECRET, Some(&[b'a'; 129]), &[], true),
            Err(EncodeError::ValueTooLong(129))
        );
    }

    #[test]
    fn lengths_are_checked_before_anything_is_read() {
        assert_eq!(
            Packet::decode(&[1; 19]).unwrap_err(),
            DecodeError::Short(19)
        );
        let mut bytes = radclient();
        bytes[2..4].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(
            Packet::decode(&bytes).unwrap_err(),
            DecodeError::TooLong(5000)
        );
        let mut bytes = radclient();
        bytes[2..4].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(
            Packet::decode(&bytes).unwrap_err(),
            DecodeError::Length {
                declared: 200,
                received: 66
            }
        );
        // An attribute running past the end, and one of length 1.
        let mut bytes = radclient();
        bytes[21] = 60;
        assert_eq!(
            Packet::decode(&bytes).unwrap_err(),
            DecodeError::Attribute { offset: 20 }
        );
        bytes[21] = 1;
        assert_eq!(
            Packet::decode(&bytes).unwrap_err(),
            DecodeError::Attribute { offset: 20 }
        );
        // Padding after the declared length is ignored.
        let mut padded = radclient();
        padded.extend_from_slice(&[0; 10]);
        let packet = Packet::decode(&padded).unwrap();
        assert_eq!(packet.bytes().len(), 66);
        assert!(packet.authenticate(SECRET).is_ok());
    }

    #[test]
    fn a_password_of_a_bad_length_is_an_error() {
        let bytes = access_request(
            (1, [0; 16]),
            SECRET,
            None,
            &[(attribute::USER_PASSWORD, &[1; 15])],
            true,
        )
        .unwrap();
        let packet = Packet::decode(&bytes).unwrap();
        let request = packet.authenticate(SECRET).unwrap();
        assert_eq!(request.password().unwrap_err(), FieldError::PasswordLength);
        let long = access_request(
            (1, [0; 16]),
            SECRET,
            None,
            &[(attribute::USER_PASSWORD, &[1; 144])],
            true,
        )
        .unwrap();
        let packet = Packet::decode(&long).unwrap();
        assert_eq!(
            packet.authenticate(SECRET).unwrap().password().unwrap_err(),
            FieldError::PasswordLength
        );
    }
}
