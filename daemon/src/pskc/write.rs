//! Writing a PSKC file (RFC 6030) the way a token vendor ships one: every
//! key encrypted with AES-128-CBC under a pre-shared key (§6.1), the MAC
//! key (HMAC-SHA256) carried encrypted in the header (§6.1.1), and the MAC
//! of every encrypted value beside it. The simulator delivers its fleets'
//! cards this way and benchmarks write large files to import; [`super::read`]
//! checks such a file as it checks any vendor's.
//!
//! Streamed: a million tokens never sit in memory as text.

use std::io::{self, Write};

use aes::cipher::{BlockModeEncrypt, KeyIvInit, block_padding::NoPadding};
use data_encoding::BASE64;
use quick_xml::escape::escape;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::hmac;
use zeroize::Zeroizing;

use crate::identity::Serial;
use crate::otp::token::TokenAlgorithm;
use crate::otp::{HashAlgorithm, SecretKey};

const AES128_CBC: &str = "http://www.w3.org/2001/04/xmlenc#aes128-cbc";
const HMAC_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256";
const ALGORITHM: &str = "urn:ietf:params:xml:ns:keyprov:pskc:";

/// One token as a vendor's file describes it.
pub struct TokenEntry<'a> {
    pub serial: &'a Serial,
    pub manufacturer: &'a str,
    pub algorithm: &'a TokenAlgorithm,
    pub key: &'a SecretKey,
    /// Where the event counter starts (HOTP, OCRA with `C`).
    pub counter: u64,
}

impl std::fmt::Debug for TokenEntry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TokenEntry")
            .field("serial", self.serial)
            .field("algorithm", self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the pre-shared key is {0} bytes; this writer encrypts with AES-128 (16)")]
    KeyLength(usize),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A PSKC file being written: the header at [`Writer::new`], a key
/// package per [`Writer::token`], the end at [`Writer::finish`].
pub struct Writer<W: Write> {
    out: W,
    key: Zeroizing<[u8; 16]>,
    mac: hmac::Key,
    /// Draws the MAC key and the IVs: a file is reproducible from its
    /// seed, and no two values share an IV.
    rng: ChaCha20Rng,
}

impl<W: Write> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("pskc::Writer(..)")
    }
}

impl<W: Write> Writer<W> {
    /// Starts a file whose keys open with `pre_shared_key` (16 bytes);
    /// `seed` makes the MAC key and the IVs.
    pub fn new(out: W, pre_shared_key: &SecretKey, seed: [u8; 32]) -> Result<Self, WriteError> {
        let key: [u8; 16] = pre_shared_key
            .expose_secret()
            .try_into()
            .map_err(|_| WriteError::KeyLength(pre_shared_key.len()))?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut mac_key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(mac_key.as_mut_slice());
        let mut writer = Self {
            out,
            key: Zeroizing::new(key),
            mac: hmac::Key::new(hmac::HMAC_SHA256, mac_key.as_slice()),
            rng,
        };
        let sealed_mac_key = BASE64.encode(&writer.encrypt(mac_key.as_slice()));
        write!(
            writer.out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <KeyContainer Version=\"1.0\" xmlns=\"urn:ietf:params:xml:ns:keyprov:pskc\" \
             xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\" \
             xmlns:xenc=\"http://www.w3.org/2001/04/xmlenc#\">\n\
             <EncryptionKey><ds:KeyName>Pre-shared-key</ds:KeyName></EncryptionKey>\n\
             <MACMethod Algorithm=\"{HMAC_SHA256}\"><MACKey>\
             <xenc:EncryptionMethod Algorithm=\"{AES128_CBC}\"/>\
             <xenc:CipherData><xenc:CipherValue>{sealed_mac_key}</xenc:CipherValue>\
             </xenc:CipherData></MACKey></MACMethod>\n"
        )?;
        Ok(writer)
    }

    /// Writes one token's key package.
    pub fn token(&mut self, token: &TokenEntry<'_>) -> Result<(), WriteError> {
        let (name, parameters, data) = match token.algorithm {
            TokenAlgorithm::Hotp { hash, digits } => (
                "hotp",
                format!("{}{}", hash_suite(*hash), response_format(digits.get())),
                String::new(),
            ),
            TokenAlgorithm::Totp {
                hash,
                digits,
                step,
                origin,
            } => (
                "totp",
                format!("{}{}", hash_suite(*hash), response_format(digits.get())),
                format!(
                    "<Time><PlainValue>{origin}</PlainValue></Time>\
                     <TimeInterval><PlainValue>{}</PlainValue></TimeInterval>",
                    step.as_duration().as_secs()
                ),
            ),
            TokenAlgorithm::Ocra { suite } => (
                "ocra",
                format!(
                    "<Suite>{}</Suite>{}",
                    escape(suite.to_string().as_str()),
                    response_format(suite.digits())
                ),
                String::new(),
            ),
        };
        let sealed = self.encrypt(token.key.expose_secret());
        // §6.1.1: the MAC is over the whole cipher value, IV included.
        let mac = BASE64.encode(hmac::sign(&self.mac, &sealed).as_ref());
        let secret = BASE64.encode(&sealed);
        writeln!(
            self.out,
            "<KeyPackage><DeviceInfo><Manufacturer>{manufacturer}</Manufacturer>\
             <SerialNo>{serial}</SerialNo></DeviceInfo>\
             <Key Id=\"{serial}\" Algorithm=\"{ALGORITHM}{name}\">\
             <AlgorithmParameters>{parameters}</AlgorithmParameters><Data><Secret>\
             <EncryptedValue><xenc:EncryptionMethod Algorithm=\"{AES128_CBC}\"/>\
             <xenc:CipherData><xenc:CipherValue>{secret}</xenc:CipherValue></xenc:CipherData>\
             </EncryptedValue><ValueMAC>{mac}</ValueMAC></Secret>\
             <Counter><PlainValue>{counter}</PlainValue></Counter>{data}</Data></Key>\
             </KeyPackage>",
            manufacturer = escape(token.manufacturer),
            serial = escape(token.serial.as_str()),
            counter = token.counter,
        )?;
        Ok(())
    }

    /// Ends the file and hands back the output (flushed).
    pub fn finish(mut self) -> Result<W, WriteError> {
        self.out.write_all(b"</KeyContainer>\n")?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// `value` encrypted under the pre-shared key with a fresh IV: the IV
    /// and the ciphertext (PKCS#7 padding, which XML Encryption's padding
    /// rule accepts).
    fn encrypt(&mut self, value: &[u8]) -> Vec<u8> {
        let mut iv = [0u8; 16];
        self.rng.fill_bytes(&mut iv);
        let pad = 16 - value.len() % 16;
        let mut body = Zeroizing::new(Vec::with_capacity(value.len() + pad));
        body.extend_from_slice(value);
        body.resize(value.len() + pad, pad as u8);
        let length = body.len();
        let encryptor = cbc::Encryptor::<aes::Aes128>::new(&(*self.key).into(), &iv.into());
        // Whole blocks, padded above: NoPadding cannot fail.
        let _ = encryptor.encrypt_padded::<NoPadding>(&mut body, length);
        let mut out = Vec::with_capacity(16 + length);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&body);
        out
    }
}

/// A hash other than SHA1 named the way common tools read it.
fn hash_suite(hash: HashAlgorithm) -> String {
    match hash {
        HashAlgorithm::Sha1 => String::new(),
        other => format!("<Suite>HMAC-{}</Suite>", other.as_str()),
    }
}

fn response_format(digits: u8) -> String {
    format!("<ResponseFormat Length=\"{digits}\" Encoding=\"DECIMAL\"/>")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::otp::hotp::Digits;
    use crate::otp::totp::TimeStep;
    use crate::pskc::{Limits, Opening, Problem, PskcError, read};

    const LIMITS: Limits = Limits {
        max_tokens: 10,
        min_key_bytes: 16,
    };

    fn algorithms() -> Vec<TokenAlgorithm> {
        vec![
            TokenAlgorithm::Hotp {
                hash: HashAlgorithm::Sha1,
                digits: Digits::new(6).unwrap(),
            },
            TokenAlgorithm::Totp {
                hash: HashAlgorithm::Sha256,
                digits: Digits::new(8).unwrap(),
                step: TimeStep::new(Duration::from_secs(60)).unwrap(),
                origin: 7,
            },
            TokenAlgorithm::Ocra {
                suite: Arc::new("OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1".parse().unwrap()),
            },
        ]
    }

    fn file(psk: &SecretKey) -> Vec<u8> {
        let mut writer = Writer::new(Vec::new(), psk, [4; 32]).unwrap();
        for (n, algorithm) in algorithms().iter().enumerate() {
            let serial = Serial::new(&format!("00{n}<&>")).unwrap();
            let key = SecretKey::from_bytes(vec![n as u8 + 1; 20]).unwrap();
            writer
                .token(&TokenEntry {
                    serial: &serial,
                    manufacturer: "sls & co",
                    algorithm,
                    key: &key,
                    counter: 40 + n as u64,
                })
                .unwrap();
        }
        writer.finish().unwrap()
    }

    #[test]
    fn a_written_file_reads_back_whole() {
        let psk = SecretKey::from_bytes(vec![9; 16]).unwrap();
        let bytes = file(&psk);
        let text = String::from_utf8(bytes.clone()).unwrap();
        // No key in clear.
        assert!(!text.contains(&BASE64.encode(&[1; 20])));
        let tokens = read(bytes.as_slice(), Opening::PreSharedKey(&psk), &LIMITS).unwrap();
        assert_eq!(tokens.len(), 3);
        for (n, (token, algorithm)) in tokens.iter().zip(algorithms()).enumerate() {
            assert_eq!(token.serial.as_str(), format!("00{n}<&>"));
            assert_eq!(token.algorithm, algorithm);
            assert_eq!(token.key.expose_secret(), &[n as u8 + 1; 20]);
            assert_eq!(token.counter, 40 + n as u64);
            assert_eq!(token.manufacturer.as_deref(), Some("sls & co"));
        }
    }

    #[test]
    fn a_written_file_does_not_open_under_another_key() {
        let bytes = file(&SecretKey::from_bytes(vec![9; 16]).unwrap());
        let other = SecretKey::from_bytes(vec![8; 16]).unwrap();
        let error = read(bytes.as_slice(), Opening::PreSharedKey(&other), &LIMITS).unwrap_err();
        assert!(matches!(error, PskcError::Encryption(_)), "{error}");
        // A changed ciphertext fails its MAC.
        let text = String::from_utf8(bytes).unwrap();
        let at = text.rfind("<xenc:CipherValue>").unwrap() + "<xenc:CipherValue>".len();
        let mut damaged = text.into_bytes();
        damaged[at + 30] = if damaged[at + 30] == b'A' { b'B' } else { b'A' };
        let psk = SecretKey::from_bytes(vec![9; 16]).unwrap();
        let error = read(damaged.as_slice(), Opening::PreSharedKey(&psk), &LIMITS).unwrap_err();
        assert!(
            matches!(
                error,
                PskcError::Package {
                    index: 3,
                    problem: Problem::BadMac,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn only_an_aes_128_key_writes() {
        let long = SecretKey::from_bytes(vec![9; 32]).unwrap();
        assert!(matches!(
            Writer::new(Vec::new(), &long, [0; 32]),
            Err(WriteError::KeyLength(32))
        ));
    }
}
