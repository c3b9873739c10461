//! Opening a PSKC file's encrypted values (RFC 6030 §6): the encryption
//! key (pre-shared, or derived from a password with PBKDF2, §6.2), the MAC
//! key it protects (§6.1.1), and each value decrypted only after its MAC
//! over the whole cipher value (IV and ciphertext) matched.

use std::num::NonZeroU32;

use aes::cipher::{BlockModeDecrypt, KeyIvInit, block_padding::NoPadding};
use data_encoding::BASE64;
use ring::{hmac, pbkdf2};
use zeroize::Zeroizing;

use super::xml::Fields;
use crate::otp::SecretKey;

/// What opens an encrypted file: the operator's pre-shared key or password.
#[derive(Clone, Copy)]
pub enum Opening<'a> {
    /// Nothing: only a file without encrypted values reads.
    Nothing,
    /// A pre-shared AES key (16, 24 or 32 bytes).
    PreSharedKey(&'a SecretKey),
    /// The password PBKDF2 derives the key from.
    Password(&'a [u8]),
}

impl std::fmt::Debug for Opening<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the password.
        f.write_str(match self {
            Self::Nothing => "Opening::Nothing",
            Self::PreSharedKey(_) => "Opening::PreSharedKey(..)",
            Self::Password(_) => "Opening::Password(..)",
        })
    }
}

/// The most PBKDF2 iterations a file may ask for: a file must not be able
/// to keep the importer busy for hours.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

const XMLDSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const XMLDSIG_MORE: &str = "http://www.w3.org/2001/04/xmldsig-more#";
const XMLENC: &str = "http://www.w3.org/2001/04/xmlenc#";
const PBKDF2_URIS: [&str; 2] = [
    "http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#pbkdf2",
    "http://www.w3.org/2009/xmlenc11#pbkdf2",
];

/// The keys that open a file's values: the encryption key and the MAC key
/// (with its algorithm); `None` for a file with no encryption.
pub struct Keys {
    encryption: Zeroizing<Vec<u8>>,
    mac: hmac::Key,
}

/// Reads the header's `EncryptionKey` and `MACMethod` and opens them with
/// `opening`. A file with neither needs nothing; one with a `MACMethod`
/// and no `EncryptionKey` is under a pre-shared key it does not name (as
/// python-pskc writes them).
pub fn open_header(header: &Fields, opening: Opening<'_>) -> Result<Option<Keys>, String> {
    if !header.has("EncryptionKey") && !header.has("MACMethod") {
        return Ok(None);
    }
    let encryption = encryption_key(header, opening)?;
    let algorithm = header.get("MACMethod@Algorithm")?.ok_or(
        "the file's keys are encrypted but it names no MACMethod: their MACs cannot be checked",
    )?;
    let algorithm = mac_algorithm(algorithm)?;
    // RFC 6030 §6.1.1: the MAC key travels encrypted under the encryption
    // key. Files written to drafts of the RFC have none and MAC under the
    // encryption key itself.
    let mac_key = match header.get("MACMethod/MACKey/CipherData/CipherValue")? {
        Some(value) => {
            let method = header.get("MACMethod/MACKey/EncryptionMethod@Algorithm")?;
            decrypt(&encryption, method, value).map_err(|problem| {
                format!(
                    "the MAC key does not open ({problem}): the pre-shared key or password is wrong"
                )
            })?
        }
        None => encryption.clone(),
    };
    Ok(Some(Keys {
        mac: hmac::Key::new(algorithm, &mac_key),
        encryption,
    }))
}

/// The key that encrypts the file's values.
fn encryption_key(header: &Fields, opening: Opening<'_>) -> Result<Zeroizing<Vec<u8>>, String> {
    const DERIVED: &str = "EncryptionKey/DerivedKey";
    if header.has(DERIVED) {
        let Opening::Password(password) = opening else {
            return Err(
                "the file's keys are encrypted under a password: give --password-file".into(),
            );
        };
        return derive(header, password);
    }
    if header.has("EncryptionKey/X509Data") {
        return Err("the file's keys are encrypted to a certificate; sls reads files encrypted with a pre-shared key or a password".into());
    }
    let Opening::PreSharedKey(key) = opening else {
        let name = header.get("EncryptionKey/KeyName")?.unwrap_or("unnamed");
        return Err(format!(
            "the file's keys are encrypted under a pre-shared key ({name:?}): give --psk-file"
        ));
    };
    Ok(Zeroizing::new(key.expose_secret().to_vec()))
}

/// The PBKDF2 key of §6.2 (parameters under the `pkcs5` namespace of the
/// RFC's figures, the `xenc11` one, or none).
fn derive(header: &Fields, password: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    const METHOD: &str = "EncryptionKey/DerivedKey/KeyDerivationMethod";
    const PARAMS: &str = "EncryptionKey/DerivedKey/KeyDerivationMethod/PBKDF2-params";
    let method = header
        .get(&format!("{METHOD}@Algorithm"))?
        .unwrap_or_default();
    if !PBKDF2_URIS.contains(&method) {
        return Err(format!("key derivation {method:?} is not PBKDF2"));
    }
    let salt = header
        .get(&format!("{PARAMS}/Salt/Specified"))?
        .ok_or("PBKDF2 has no Salt/Specified")?;
    let salt = base64(salt).map_err(|e| format!("PBKDF2 salt: {e}"))?;
    let iterations: u32 = number(header, &format!("{PARAMS}/IterationCount"))?
        .ok_or("PBKDF2 has no IterationCount")?;
    if iterations > MAX_PBKDF2_ITERATIONS {
        return Err(format!(
            "PBKDF2 asks for {iterations} iterations; at most {MAX_PBKDF2_ITERATIONS} are accepted"
        ));
    }
    let iterations = NonZeroU32::new(iterations).ok_or("PBKDF2 IterationCount is 0")?;
    let length: usize = number(header, &format!("{PARAMS}/KeyLength"))?.unwrap_or(16);
    if !matches!(length, 16 | 24 | 32) {
        return Err(format!(
            "PBKDF2 KeyLength {length} is not an AES key length (16, 24, 32)"
        ));
    }
    let prf = header
        .get(&format!("{PARAMS}/PRF@Algorithm"))?
        .or(header.get(&format!("{PARAMS}/PRF"))?);
    let prf = match prf {
        None => pbkdf2::PBKDF2_HMAC_SHA1,
        Some(uri) => match hash_name(uri) {
            Some("sha1") => pbkdf2::PBKDF2_HMAC_SHA1,
            Some("sha256") => pbkdf2::PBKDF2_HMAC_SHA256,
            Some("sha384") => pbkdf2::PBKDF2_HMAC_SHA384,
            Some("sha512") => pbkdf2::PBKDF2_HMAC_SHA512,
            _ => {
                return Err(format!(
                    "PBKDF2 PRF {uri:?} is not HMAC-SHA1, -SHA256, -SHA384 or -SHA512"
                ));
            }
        },
    };
    let mut key = Zeroizing::new(vec![0u8; length]);
    pbkdf2::derive(prf, iterations, &salt, password, &mut key);
    Ok(key)
}

/// A decimal number at `path`.
fn number<T: std::str::FromStr>(fields: &Fields, path: &str) -> Result<Option<T>, String> {
    fields
        .get(path)?
        .map(|text| {
            text.parse()
                .map_err(|_| format!("{path} is not a number: {text:?}"))
        })
        .transpose()
}

/// `sha1` … `sha512` from an HMAC algorithm URI of XML-DSig.
fn hash_name(uri: &str) -> Option<&str> {
    uri.strip_prefix(XMLDSIG)
        .or_else(|| uri.strip_prefix(XMLDSIG_MORE))
        .and_then(|name| name.strip_prefix("hmac-"))
}

fn mac_algorithm(uri: &str) -> Result<hmac::Algorithm, String> {
    match hash_name(uri) {
        Some("sha1") => Ok(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
        Some("sha256") => Ok(hmac::HMAC_SHA256),
        Some("sha384") => Ok(hmac::HMAC_SHA384),
        Some("sha512") => Ok(hmac::HMAC_SHA512),
        _ => Err(format!(
            "MAC algorithm {uri:?} is not HMAC-SHA1, -SHA256, -SHA384 or -SHA512"
        )),
    }
}

impl Keys {
    /// The value at `base` (`Key/Data/Secret`, …): its MAC checked over
    /// the cipher value, then decrypted.
    pub fn open(&self, fields: &Fields, base: &str) -> Result<Zeroizing<Vec<u8>>, Problem> {
        let cipher = fields
            .get(&format!("{base}/EncryptedValue/CipherData/CipherValue"))
            .map_err(Problem::Invalid)?
            .ok_or_else(|| Problem::Invalid(format!("{base}/EncryptedValue has no CipherValue")))?;
        let cipher_bytes = base64(cipher).map_err(|e| Problem::Invalid(format!("{base}: {e}")))?;
        let mac = fields
            .get(&format!("{base}/ValueMAC"))
            .map_err(Problem::Invalid)?
            .ok_or(Problem::MissingMac)?;
        let mac = base64(mac).map_err(|e| Problem::Invalid(format!("{base}/ValueMAC: {e}")))?;
        hmac::verify(&self.mac, &cipher_bytes, &mac).map_err(|_| Problem::BadMac)?;
        let method = fields
            .get(&format!("{base}/EncryptedValue/EncryptionMethod@Algorithm"))
            .map_err(Problem::Invalid)?;
        decrypt(&self.encryption, method, cipher)
            .map_err(|e| Problem::Invalid(format!("{base}: {e}")))
    }
}

/// Why a value did not open.
#[derive(Debug)]
pub enum Problem {
    BadMac,
    MissingMac,
    Invalid(String),
}

/// Decrypts a base64 cipher value (the IV, then the ciphertext) with
/// AES-CBC under `key`; the algorithm URI must match the key's length.
fn decrypt(key: &[u8], method: Option<&str>, cipher: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let method = method.ok_or("no EncryptionMethod")?;
    let bits = method
        .strip_prefix(XMLENC)
        .and_then(|name| name.strip_prefix("aes"))
        .and_then(|name| name.strip_suffix("-cbc"))
        .ok_or_else(|| format!("encryption {method:?} is not AES-CBC"))?;
    if bits != (key.len() * 8).to_string() {
        return Err(format!(
            "encryption {method:?} does not fit a {}-byte key",
            key.len()
        ));
    }
    let bytes = base64(cipher)?;
    let (iv, body) = bytes.split_at_checked(16).ok_or("shorter than its IV")?;
    if body.is_empty() || body.len() % 16 != 0 {
        return Err("the ciphertext is not whole AES blocks".into());
    }
    let mut plain = Zeroizing::new(body.to_vec());
    let result = match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map(|d| d.decrypt_padded::<NoPadding>(&mut plain).map(<[u8]>::len)),
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv)
            .map(|d| d.decrypt_padded::<NoPadding>(&mut plain).map(<[u8]>::len)),
        32 => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map(|d| d.decrypt_padded::<NoPadding>(&mut plain).map(<[u8]>::len)),
        n => return Err(format!("a {n}-byte key is not an AES key")),
    };
    result
        .map_err(|_| "the key or IV has the wrong length".to_owned())?
        .map_err(|_| "the ciphertext does not decrypt".to_owned())?;
    // XML Encryption's padding (§5.2 of its spec): the last byte says how
    // many bytes to drop; the others may be anything (PKCS#7 is one case).
    let pad = usize::from(plain.last().copied().unwrap_or(0));
    if !(1..=16).contains(&pad) || pad > plain.len() {
        return Err("the padding is damaged".into());
    }
    let keep = plain.len() - pad;
    plain.truncate(keep);
    Ok(plain)
}

/// Base64 with the line breaks and spaces files carry.
pub fn base64(text: &str) -> Result<Vec<u8>, String> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    BASE64
        .decode(compact.as_bytes())
        .map_err(|e| format!("not base64 ({e})"))
}
