//! IB Key push approval: Ed25519 signatures by the phone's device key.
//!
//! sls stores only the public key, so a copy of the registry cannot approve
//! anything. What the phone signs is fixed here, for both sides: a
//! subscription signs the connection's TLS exporter value (so a proof
//! cannot be replayed on another connection), an approval signs the push
//! session and the number the user picked.

use std::fmt;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use zeroize::Zeroizing;

use crate::identity::{ActivationId, DeviceId, PushId};

/// Bytes of a public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of a signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of the TLS exporter value a subscription proof signs.
pub const BINDING_LEN: usize = 32;
/// The TLS exporter label (RFC 8446 §7.5) of that value.
pub const BINDING_LABEL: &[u8] = b"EXPORTER-sls/1 phone subscription";

/// A device's Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PushKey(pub [u8; PUBLIC_KEY_LEN]);

impl fmt::Debug for PushKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PushKey({})", hex::encode(&self.0[..4]))
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(..)")
    }
}

/// What a phone signs to subscribe for `device` on a connection whose
/// exporter value is `binding`.
pub fn subscribe_message(binding: &[u8; BINDING_LEN], device: DeviceId) -> Vec<u8> {
    let mut message = b"sls/1 subscribe ".to_vec();
    message.extend_from_slice(binding);
    message.extend_from_slice(&device.0.to_be_bytes());
    message
}

/// What a phone signs to approve `push` for `device` with the number the
/// user chose.
pub fn approve_message(push: PushId, device: DeviceId, chosen: u8) -> Vec<u8> {
    let mut message = b"sls/1 approve ".to_vec();
    message.extend_from_slice(&push.0.to_be_bytes());
    message.extend_from_slice(&device.0.to_be_bytes());
    message.push(chosen);
    message
}

/// What the app signs with its old binding's key to reactivate the same
/// phone: the activation under way and the old device.
pub fn reactivate_message(activation: ActivationId, device: DeviceId) -> Vec<u8> {
    let mut message = b"sls/1 reactivate ".to_vec();
    message.extend_from_slice(&activation.0.to_be_bytes());
    message.extend_from_slice(&device.0.to_be_bytes());
    message
}

impl PushKey {
    /// Whether `signature` is this key's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, &signature.0)
            .is_ok()
    }
}

/// The phone's side: a device key pair, from a 32-byte seed.
pub struct PushSigner {
    pair: Ed25519KeyPair,
    seed: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for PushSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PushSigner({:?})", self.public())
    }
}

impl PushSigner {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let seed = Zeroizing::new(seed);
        // `from_seed_unchecked` fails only for a seed of the wrong length,
        // which the type rules out; a failure would be a ring bug.
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed[..]);
        #[allow(clippy::expect_used)]
        let pair = pair.expect("a 32-byte seed is a valid Ed25519 seed");
        Self { pair, seed }
    }

    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub fn public(&self) -> PushKey {
        let mut key = [0u8; PUBLIC_KEY_LEN];
        key.copy_from_slice(self.pair.public_key().as_ref());
        PushKey(key)
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(self.pair.sign(message).as_ref());
        Signature(signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let phone = PushSigner::from_seed([7; 32]);
        let other = PushSigner::from_seed([8; 32]);
        let message = approve_message(PushId(1), DeviceId(2), 42);
        let signature = phone.sign(&message);
        assert!(phone.public().verifies(&message, &signature));
        assert!(!other.public().verifies(&message, &signature));
        let changed = approve_message(PushId(1), DeviceId(2), 43);
        assert!(!phone.public().verifies(&changed, &signature));
        let binding = [1; BINDING_LEN];
        let subscribe = subscribe_message(&binding, DeviceId(2));
        assert!(!phone.public().verifies(&subscribe, &signature));
        assert!(phone.public().verifies(&subscribe, &phone.sign(&subscribe)));
        assert!(!format!("{phone:?}").contains("0707"));
    }
}
