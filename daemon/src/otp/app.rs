//! Enrolling an authenticator app: the `otpauth://totp/` URI every app
//! reads (the Key URI format of Google Authenticator, which the others
//! follow: the label `issuer:account`, then the key in base32 without
//! padding, the issuer again, algorithm, digits and period) and the same
//! URI as a QR code, in SVG, to scan from a screen or a letter.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use qrcode::QrCode;
use qrcode::render::svg;
use zeroize::Zeroizing;

use super::hotp::Digits;
use super::totp::TimeStep;
use super::{HashAlgorithm, SecretKey};

/// What may stand unescaped in a URI's label and query values: RFC
/// 3986's unreserved characters.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What an app is told to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppParameters {
    pub hash: HashAlgorithm,
    pub digits: Digits,
    pub step: TimeStep,
}

/// An `otpauth://` URI. It holds the key: wiped when dropped, shown
/// once, never in debug output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct AppUri(Zeroizing<String>);

impl AppUri {
    /// A URI as received (the reply to an enrolment).
    pub fn new(text: &str) -> Self {
        Self(Zeroizing::new(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AppUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppUri(..)")
    }
}

/// The `otpauth://totp/` URI of `key` for `account` at `issuer`.
pub fn otpauth_uri(
    issuer: &str,
    account: &str,
    key: &SecretKey,
    parameters: AppParameters,
) -> AppUri {
    let secret = Zeroizing::new(data_encoding::BASE32_NOPAD.encode(key.expose_secret()));
    let issuer = utf8_percent_encode(issuer, ESCAPED).to_string();
    let account = utf8_percent_encode(account, ESCAPED);
    AppUri(Zeroizing::new(format!(
        "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm={}&digits={}&period={}",
        secret.as_str(),
        parameters.hash,
        parameters.digits,
        parameters.step.as_duration().as_secs(),
    )))
}

/// The URI as a QR code: an SVG document, black modules on white with
/// the quiet zone the standard asks for.
pub fn qr_svg(uri: &str) -> Result<Zeroizing<String>, qrcode::types::QrError> {
    let code = QrCode::new(uri.as_bytes())?;
    Ok(Zeroizing::new(
        code.render::<svg::Color<'_>>()
            .min_dimensions(256, 256)
            .quiet_zone(true)
            .build(),
    ))
}
