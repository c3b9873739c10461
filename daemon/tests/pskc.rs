//! PSKC import (RFC 6030): the RFC's own example files read with the right
//! keys, the forms vendors write, and every corruption importing nothing
//! with the key package and the reason named.

use std::path::Path;

use slsd::identity::Serial;
use slsd::otp::hotp::{Digits, hotp};
use slsd::otp::token::TokenAlgorithm;
use slsd::otp::{HashAlgorithm, HmacKey, SecretKey};
use slsd::pskc::{self, ImportedToken, Limits, Opening, Problem, PskcError};

const LIMITS: Limits = Limits {
    max_tokens: 100,
    min_key_bytes: 16,
};

/// The RFC's secret in every encrypted figure: the ASCII of
/// "12345678901234567890".
const RFC_SECRET: &[u8] = b"12345678901234567890";

fn figure(n: u32) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/pskc")
        .join(format!("rfc6030-figure{n}.xml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read(text: &str, opening: Opening<'_>) -> Result<Vec<ImportedToken>, PskcError> {
    pskc::read(text.as_bytes(), opening, &LIMITS)
}

fn psk() -> SecretKey {
    SecretKey::from_hex("12345678901234567890123456789012").unwrap()
}

fn only(tokens: Vec<ImportedToken>) -> ImportedToken {
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    tokens.into_iter().next().unwrap()
}

/// The package problem of a refused file.
fn problem(result: Result<Vec<ImportedToken>, PskcError>) -> (usize, String, Problem) {
    match result {
        Err(PskcError::Package {
            index,
            serial,
            problem,
        }) => (index, serial, problem),
        other => panic!("expected a key package's problem, got {other:?}"),
    }
}

fn assert_rfc_hotp(token: &ImportedToken) {
    assert_eq!(token.serial, Serial::new("987654321").unwrap());
    assert_eq!(
        token.algorithm,
        TokenAlgorithm::Hotp {
            hash: HashAlgorithm::Sha1,
            digits: Digits::exactly(8)
        }
    );
    assert_eq!(token.key.expose_secret(), RFC_SECRET);
    assert_eq!(token.counter, 0);
    // RFC 4226 Appendix D, counter 0, as 8 digits: the key is the right one.
    let key = HmacKey::new(HashAlgorithm::Sha1, &token.key);
    assert_eq!(hotp(&key, 0, Digits::exactly(8)).as_str(), "84755224");
}

#[test]
fn figure_3_a_plain_hotp_key_with_its_serial_and_counter() {
    let token = only(read(&figure(3), Opening::Nothing).unwrap());
    assert_rfc_hotp(&token);
    assert_eq!(token.manufacturer.as_deref(), Some("Manufacturer"));
    assert_eq!((token.valid_from, token.valid_until), (None, None));
}

#[test]
fn figure_5_the_pin_key_package_is_skipped() {
    // Its PIN is checked on the token itself (PINUsageMode Local): not a
    // token to import, and its serial is the token's own.
    assert_rfc_hotp(&only(read(&figure(5), Opening::Nothing).unwrap()));
}

#[test]
fn figure_6_a_key_encrypted_under_a_pre_shared_key() {
    let key = psk();
    assert_rfc_hotp(&only(
        read(&figure(6), Opening::PreSharedKey(&key)).unwrap(),
    ));
}

#[test]
fn figure_7_a_key_encrypted_under_a_password() {
    let token = only(read(&figure(7), Opening::Password(b"qwerty")).unwrap());
    assert_rfc_hotp(&token);
    assert_eq!(token.manufacturer.as_deref(), Some("TokenVendorAcme"));
}

#[test]
fn figure_7_with_the_pbkdf2_parameters_of_xml_encryption_1_1() {
    // The same values written as tools following XML Encryption 1.1 do.
    let xenc11 = figure(7)
        .replace(
            "http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#pbkdf2",
            "http://www.w3.org/2009/xmlenc11#pbkdf2",
        )
        .replace("pkcs5:PBKDF2-params", "xenc11:PBKDF2-params")
        .replace("<Salt>", "<xenc11:Salt>")
        .replace("</Salt>", "</xenc11:Salt>")
        .replace("<Specified>", "<xenc11:Specified>")
        .replace("</Specified>", "</xenc11:Specified>")
        .replace("<IterationCount>", "<xenc11:IterationCount>")
        .replace("</IterationCount>", "</xenc11:IterationCount>")
        .replace("<KeyLength>", "<xenc11:KeyLength>")
        .replace("</KeyLength>", "</xenc11:KeyLength>")
        .replace(
            "<PRF/>",
            r#"<xenc11:PRF Algorithm="http://www.w3.org/2000/09/xmldsig#hmac-sha1"/>"#,
        );
    assert!(xenc11.contains("xenc11:Salt"));
    assert_rfc_hotp(&only(read(&xenc11, Opening::Password(b"qwerty")).unwrap()));
}

#[test]
fn an_ocra_card_with_its_suite_in_the_algorithm_parameters_and_a_zero_led_serial() {
    let ocra = figure(6)
        .replace(
            "urn:ietf:params:xml:ns:keyprov:pskc:hotp",
            "urn:ietf:params:xml:ns:keyprov:pskc:ocra",
        )
        .replace(
            r#"<ResponseFormat Length="8" Encoding="DECIMAL"/>"#,
            r#"<Suite>OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1</Suite>
               <ResponseFormat Length="6" Encoding="DECIMAL"/>"#,
        )
        .replace(
            "<SerialNo>987654321</SerialNo>",
            "<SerialNo>000123</SerialNo>",
        )
        .replace("<PlainValue>0</PlainValue>", "<PlainValue>42</PlainValue>");
    let key = psk();
    let token = only(read(&ocra, Opening::PreSharedKey(&key)).unwrap());
    assert_eq!(token.serial.as_str(), "000123");
    let TokenAlgorithm::Ocra { suite } = &token.algorithm else {
        panic!("{:?}", token.algorithm)
    };
    assert_eq!(suite.as_str(), "OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1");
    assert!(token.algorithm.counts_events());
    assert_eq!(token.counter, 42);
    assert_eq!(token.key.expose_secret(), RFC_SECRET);

    // A response format that contradicts the suite is refused.
    let contradicting = ocra.replace(r#"Length="6""#, r#"Length="8""#);
    let (_, _, refused) = problem(read(&contradicting, Opening::PreSharedKey(&key)));
    assert!(matches!(refused, Problem::Invalid(text) if text.contains("Length 8")));

    // A suite with both a counter and a time step has two moving factors:
    // refused, and nothing of the file is imported.
    let both = ocra.replace("C-QN08-PSHA1", "C-QN08-PSHA1-T1M");
    let (_, serial, refused) = problem(read(&both, Opening::PreSharedKey(&key)));
    assert_eq!(serial, "000123");
    assert!(
        matches!(&refused, Problem::Invalid(text) if text.contains("both a counter (C) and a time step (T)")),
        "{refused:?}"
    );
}

#[test]
fn a_totp_token_with_its_time_step_origin_and_validity() {
    let totp = figure(3)
        .replace(
            "urn:ietf:params:xml:ns:keyprov:pskc:hotp",
            "urn:ietf:params:xml:ns:keyprov:pskc:totp",
        )
        .replace(
            r#"<ResponseFormat Length="8" Encoding="DECIMAL"/>"#,
            r#"<Suite>HMAC-SHA256</Suite><ResponseFormat Length="6" Encoding="DECIMAL"/>"#,
        )
        .replace(
            "<Counter>\n                    <PlainValue>0</PlainValue>\n                </Counter>",
            "<Time><PlainValue>60</PlainValue></Time>
             <TimeInterval><PlainValue>60</PlainValue></TimeInterval>",
        )
        .replace(
            "<UserId>UID=",
            "<Policy><StartDate>2026-01-01T00:00:00Z</StartDate>\
             <ExpiryDate>2031-01-01T00:00:00</ExpiryDate></Policy><UserId>UID=",
        );
    let token = only(read(&totp, Opening::Nothing).unwrap());
    let TokenAlgorithm::Totp {
        hash,
        digits,
        step,
        origin,
    } = token.algorithm
    else {
        panic!("{:?}", token.algorithm)
    };
    assert_eq!(
        (hash, digits.get(), step.as_duration().as_secs(), origin),
        (HashAlgorithm::Sha256, 6, 60, 60)
    );
    assert_eq!(token.valid_from.map(|t| t.0), Some(1_767_225_600_000));
    assert_eq!(token.valid_until.map(|t| t.0), Some(1_924_992_000_000));
}

#[test]
fn a_flipped_mac_byte_imports_nothing_and_names_the_package() {
    let key = psk();
    // Su+N… → Su+M…: one bit of the MAC.
    let flipped = figure(6).replace("Su+NvtQf", "Su+MvtQf");
    assert_eq!(
        problem(read(&flipped, Opening::PreSharedKey(&key))),
        (1, "987654321".into(), Problem::BadMac)
    );
    // A changed ciphertext under the original MAC: the same.
    let altered = figure(6).replace("AAECAwQFBgcICQoLDA0OD+cI", "AAECAwQFBgcICQoLDA0OD+cJ");
    assert_eq!(
        problem(read(&altered, Opening::PreSharedKey(&key))).2,
        Problem::BadMac
    );
}

#[test]
fn an_encrypted_value_without_its_mac_imports_nothing() {
    let key = psk();
    let start = figure(6).find("<ValueMAC>").unwrap();
    let end = figure(6).find("</ValueMAC>").unwrap() + "</ValueMAC>".len();
    let mut text = figure(6);
    text.replace_range(start..end, "");
    assert_eq!(
        problem(read(&text, Opening::PreSharedKey(&key))).2,
        Problem::MissingMac
    );
}

#[test]
fn a_wrong_password_or_pre_shared_key_imports_nothing() {
    let refused = |result: Result<Vec<ImportedToken>, PskcError>| match result {
        Err(PskcError::Encryption(text)) => assert!(text.contains("wrong"), "{text}"),
        Err(PskcError::Package { problem, .. }) => assert_eq!(problem, Problem::BadMac),
        other => panic!("a wrong key was not noticed: {other:?}"),
    };
    refused(read(&figure(7), Opening::Password(b"qwertz")));
    let wrong = SecretKey::from_hex("12345678901234567890123456789013").unwrap();
    refused(read(&figure(6), Opening::PreSharedKey(&wrong)));
    // And the file says what opens it when it is not given.
    let Err(PskcError::Encryption(text)) = read(&figure(6), Opening::Nothing) else {
        panic!("an encrypted file read without a key")
    };
    assert!(text.contains("--psk-file"), "{text}");
    let Err(PskcError::Encryption(text)) = read(&figure(7), Opening::PreSharedKey(&psk())) else {
        panic!("a password file read with a pre-shared key")
    };
    assert!(text.contains("--password-file"), "{text}");
}

/// Figure 3 with a second key package: `serial` and `algorithm` for it.
fn two_packages(serial: &str, algorithm: &str) -> String {
    let text = figure(3);
    let start = text.find("<KeyPackage>").unwrap();
    let end = text.find("</KeyPackage>").unwrap() + "</KeyPackage>".len();
    let second = text[start..end]
        .replace("987654321", serial)
        .replace("urn:ietf:params:xml:ns:keyprov:pskc:hotp", algorithm);
    let mut out = text.clone();
    out.insert_str(end, &second);
    out
}

#[test]
fn a_duplicate_serial_imports_nothing() {
    let text = two_packages("987654321", "urn:ietf:params:xml:ns:keyprov:pskc:hotp");
    assert_eq!(
        problem(read(&text, Opening::Nothing)),
        (2, "987654321".into(), Problem::DuplicateSerial { first: 1 })
    );
    let distinct = two_packages("987654322", "urn:ietf:params:xml:ns:keyprov:pskc:hotp");
    assert_eq!(read(&distinct, Opening::Nothing).unwrap().len(), 2);
}

#[test]
fn an_unknown_algorithm_imports_nothing() {
    let securid = "http://www.rsa.com/names/2008/04/algorithms/SecurID#SecurID-AES128-Counter";
    assert_eq!(
        problem(read(&two_packages("2", securid), Opening::Nothing)),
        (2, "2".into(), Problem::UnknownAlgorithm(securid.into()))
    );
}

#[test]
fn a_key_too_short_or_without_a_serial_imports_nothing() {
    // Figure 2's secret is "1234", and it has no DeviceInfo.
    let (index, serial, refused) = problem(read(&figure(2), Opening::Nothing));
    assert_eq!((index, serial.as_str()), (1, "?"));
    assert!(matches!(refused, Problem::Invalid(text) if text.contains("SerialNo")));
    let with_serial = figure(2).replace(
        "<KeyPackage>",
        "<KeyPackage><DeviceInfo><SerialNo>7</SerialNo></DeviceInfo>",
    );
    let with_serial = with_serial.replace(
        "<Issuer>Issuer-A</Issuer>",
        r#"<AlgorithmParameters><ResponseFormat Length="6"/></AlgorithmParameters>"#,
    );
    assert_eq!(
        problem(read(&with_serial, Opening::Nothing)).2,
        Problem::KeyTooShort { bytes: 4, min: 16 }
    );
}

#[test]
fn entities_prefixes_and_limits() {
    let named = figure(3).replace(
        "<Manufacturer>Manufacturer",
        "<Manufacturer>A&amp;B &#x41;G",
    );
    assert_eq!(
        only(read(&named, Opening::Nothing).unwrap())
            .manufacturer
            .as_deref(),
        Some("A&B AG")
    );
    // A document type declaration could expand entities without bound.
    let dtd = figure(3).replace(
        "<KeyContainer",
        "<!DOCTYPE KeyContainer [<!ENTITY a \"aaaa\">]><KeyContainer",
    );
    assert!(matches!(
        read(&dtd, Opening::Nothing),
        Err(PskcError::Xml { .. })
    ));
    let one = Limits {
        max_tokens: 1,
        ..LIMITS
    };
    let two = two_packages("987654322", "urn:ietf:params:xml:ns:keyprov:pskc:hotp");
    assert!(matches!(
        pskc::read(two.as_bytes(), Opening::Nothing, &one),
        Err(PskcError::TooMany(1))
    ));
    assert!(matches!(
        read("<html/>", Opening::Nothing),
        Err(PskcError::Xml { .. } | PskcError::NotPskc(_))
    ));
    let truncated = &figure(3)[..600];
    assert!(read(truncated, Opening::Nothing).is_err());
}

#[test]
fn pre_shared_key_files_in_hex_with_or_without_a_newline() {
    for text in [
        "12345678901234567890123456789012",
        "12345678901234567890123456789012\n",
        "12345678901234567890123456789012\r\n",
    ] {
        assert_eq!(pskc::pre_shared_key(text).unwrap(), psk());
    }
    assert!(pskc::pre_shared_key("1234").is_err());
    assert!(pskc::pre_shared_key("zz345678901234567890123456789012").is_err());
}
