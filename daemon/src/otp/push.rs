//! IB Key push approval: Ed25519 signatures by the phone's device key.
//!
//! sls stores only the public key, so a copy of the registry cannot approve
//! anything. What the phone signs is fixed here, for both sides: a
//! subscription signs the connection's TLS exporter value (so a proof
//! cannot be replayed on another connection), an approval signs the push
//! session and the number the user picked.

use std::borrow::Borrow;
use std::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};

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
    /// Whether `signature` is this key's over `message`, by the strict
    /// rules (canonical encodings, no key or nonce of small order).
    pub fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        self.verifying_key().is_some_and(|key| {
            let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
            key.verify_strict(message, &signature).is_ok()
        })
    }

    /// The key as a curve point; `None` for bytes that are not one, or for
    /// a weak key (of small order), which anyone could sign for.
    fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0)
            .ok()
            .filter(|key| !key.is_weak())
    }
}

/// One signature to check: a key, what it should have signed, the proof.
#[derive(Debug, Clone)]
pub struct SignedMessage {
    pub key: PushKey,
    pub message: Vec<u8>,
    pub signature: Signature,
}

impl SignedMessage {
    /// Whether the signature verifies, checked alone ([`PushKey::verifies`]).
    pub fn verifies(&self) -> bool {
        self.key.verifies(&self.message, &self.signature)
    }
}

/// Whether each of `signed` verifies, as [`PushKey::verifies`] would say,
/// at about half its cost per signature when several come together: one
/// batch equation for all of them (ed25519-dalek's `verify_batch`, random
/// linear combination with coefficients drawn from a transcript of the
/// batch), and only if that fails, each one on its own to find which.
///
/// The batch equation is the cofactorless one and does not itself reject a
/// nonce of small order, which the strict check does; such a signature can
/// only be made by the key's holder, who can sign properly anyway, so a
/// batch accepts nothing an attacker could not have had accepted alone.
/// Weak keys are rejected before the batch, as the strict check does.
///
/// Takes the checks by value or by reference, so a caller holding them in
/// other structures need not copy the messages.
pub fn verify_each<S: Borrow<SignedMessage>>(signed: &[S]) -> Vec<bool> {
    let signed = || signed.iter().map(Borrow::borrow);
    let keys: Vec<Option<VerifyingKey>> = signed().map(|s| s.key.verifying_key()).collect();
    let valid = keys.iter().filter(|key| key.is_some()).count();
    // A batch of one costs more than the check alone.
    if valid >= 2 {
        let mut messages = Vec::with_capacity(valid);
        let mut signatures = Vec::with_capacity(valid);
        let mut verifying_keys = Vec::with_capacity(valid);
        for (one, key) in signed().zip(&keys) {
            if let Some(key) = key {
                messages.push(one.message.as_slice());
                signatures.push(ed25519_dalek::Signature::from_bytes(&one.signature.0));
                verifying_keys.push(*key);
            }
        }
        if ed25519_dalek::verify_batch(&messages, &signatures, &verifying_keys).is_ok() {
            return keys.iter().map(Option::is_some).collect();
        }
    }
    signed().map(SignedMessage::verifies).collect()
}

/// The phone's side: a device key pair, from a 32-byte seed (zeroized
/// when the signer is dropped).
pub struct PushSigner {
    key: SigningKey,
}

impl fmt::Debug for PushSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PushSigner({:?})", self.public())
    }
}

impl PushSigner {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let seed = zeroize::Zeroizing::new(seed);
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn seed(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    pub fn public(&self) -> PushKey {
        PushKey(self.key.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature(self.key.sign(message).to_bytes())
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

    #[test]
    fn signing_and_checking_follow_rfc_8032() {
        // RFC 8032 §7.1, TEST 1: an empty message.
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let seed: [u8; 32] = seed.unwrap().try_into().unwrap();
        let phone = PushSigner::from_seed(seed);
        let public = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        assert_eq!(hex::encode(phone.public().0), public);
        let signature = phone.sign(b"");
        assert_eq!(
            hex::encode(signature.0),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065\
             224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        assert!(phone.public().verifies(b"", &signature));
    }

    fn signed(count: u8) -> Vec<SignedMessage> {
        (0..count)
            .map(|i| {
                let phone = PushSigner::from_seed([i + 1; 32]);
                let message = approve_message(PushId(u64::from(i)), DeviceId(9), i);
                SignedMessage {
                    key: phone.public(),
                    signature: phone.sign(&message),
                    message,
                }
            })
            .collect()
    }

    #[test]
    fn a_batch_finds_each_bad_signature_among_good_ones() {
        let mut batch = signed(8);
        assert_eq!(verify_each(&batch), vec![true; 8]);
        // A proof for another message, a key swapped for another device's,
        // a flipped bit, and a weak key (the identity point, whose
        // signatures anyone can forge) each fail alone; the rest stand.
        batch[1].message.push(0);
        batch[3].key = batch[4].key;
        batch[5].signature.0[10] ^= 1;
        let mut identity = [0u8; PUBLIC_KEY_LEN];
        identity[0] = 1;
        batch[6].key = PushKey(identity);
        let expected = vec![true, false, true, false, true, false, false, true];
        assert_eq!(verify_each(&batch), expected);
        let alone: Vec<bool> = batch.iter().map(SignedMessage::verifies).collect();
        assert_eq!(alone, expected);
        // One bad signature, alone or with one good one.
        assert_eq!(verify_each(&batch[5..6]), vec![false]);
        assert_eq!(verify_each(&batch[4..6]), vec![true, false]);
        assert_eq!(verify_each::<SignedMessage>(&[]), Vec::<bool>::new());
    }
}
