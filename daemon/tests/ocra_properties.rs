//! Property tests of OCRA: suites print back as parsed, and the data input
//! has the RFC 6287 layout for every suite and input.

use proptest::prelude::*;
use slsd::otp::ocra::{
    InputError, Ocra, OcraInput, QUESTION_BYTES, QuestionFormat, Suite, data_input,
};
use slsd::otp::{HashAlgorithm, SecretKey};

fn hash() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("SHA1"), Just("SHA256"), Just("SHA512")]
}

/// Any valid suite, built from its grammar.
fn suite_text() -> impl Strategy<Value = String> {
    let digits = prop_oneof![Just(0u8), 4u8..=10];
    let question = (prop_oneof![Just('A'), Just('N'), Just('H')], 4u8..=64);
    let time = prop_oneof![
        (1u8..=59).prop_map(|n| format!("{n}S")),
        (1u8..=59).prop_map(|n| format!("{n}M")),
        (1u8..=48).prop_map(|n| format!("{n}H")),
    ];
    (
        hash(),
        digits,
        any::<bool>(),
        question,
        proptest::option::of(hash()),
        proptest::option::of(1u16..=999),
        proptest::option::of(time),
    )
        .prop_map(|(h, d, c, (qf, ql), p, s, t)| {
            let mut text = format!("OCRA-1:HOTP-{h}-{d}:");
            if c {
                text.push_str("C-");
            }
            text.push_str(&format!("Q{qf}{ql:02}"));
            if let Some(p) = p {
                text.push_str(&format!("-P{p}"));
            }
            if let Some(s) = s {
                text.push_str(&format!("-S{s:03}"));
            }
            if let Some(t) = t {
                text.push_str(&format!("-T{t}"));
            }
            text
        })
}

/// A question of the suite's format and length, as a user would type it.
fn question_for(format: QuestionFormat, len: usize) -> BoxedStrategy<String> {
    let pattern = match format {
        QuestionFormat::Numeric => format!("[0-9]{{1,{len}}}"),
        QuestionFormat::Hex => format!("[0-9a-fA-F]{{1,{len}}}"),
        QuestionFormat::Alphanumeric => format!("[!-~]{{1,{len}}}"),
    };
    proptest::string::string_regex(&pattern).unwrap().boxed()
}

/// A suite with an input that satisfies it (owned; see [`Case::input`]).
#[derive(Debug, Clone)]
struct Case {
    suite: Suite,
    counter: Option<u64>,
    question: String,
    pin: Option<Vec<u8>>,
    session: Option<Vec<u8>>,
    timestamp: Option<u64>,
}

impl Case {
    fn input(&self) -> OcraInput<'_> {
        OcraInput {
            counter: self.counter,
            question: &self.question,
            pin_hash: self.pin.as_deref(),
            session: self.session.as_deref(),
            timestamp: self.timestamp,
        }
    }
}

fn suite_and_input() -> impl Strategy<Value = Case> {
    suite_text().prop_flat_map(|text| {
        let suite: Suite = text.parse().unwrap();
        let question = question_for(suite.question_format(), usize::from(suite.question_len()));
        let counter = if suite.uses_counter() {
            any::<u64>().prop_map(Some).boxed()
        } else {
            Just(None).boxed()
        };
        let pin = match suite.pin() {
            Some(h) => proptest::collection::vec(any::<u8>(), h.output_len())
                .prop_map(Some)
                .boxed(),
            None => Just(None).boxed(),
        };
        let session = match suite.session_len() {
            Some(n) => proptest::collection::vec(any::<u8>(), 0..=usize::from(n))
                .prop_map(Some)
                .boxed(),
            None => Just(None).boxed(),
        };
        let timestamp = if suite.time_step().is_some() {
            any::<u64>().prop_map(Some).boxed()
        } else {
            Just(None).boxed()
        };
        (Just(suite), counter, question, pin, session, timestamp).prop_map(
            |(suite, counter, question, pin, session, timestamp)| Case {
                suite,
                counter,
                question,
                pin,
                session,
                timestamp,
            },
        )
    })
}

/// The question field as the RFC's reference code builds it, independently:
/// a hex string (QN: the number's hex, QH: as typed, QA: the bytes' hex)
/// padded on the right with '0' to 256 nibbles.
fn reference_question(format: QuestionFormat, question: &str) -> Vec<u8> {
    let hex_text = match format {
        QuestionFormat::Hex => question.to_string(),
        QuestionFormat::Alphanumeric => hex::encode(question.as_bytes()),
        QuestionFormat::Numeric => decimal_to_hex(question),
    };
    let padded = format!("{hex_text:0<256}");
    hex::decode(padded).unwrap()
}

/// Decimal string to minimal hex digits, by long division (no shared code
/// with the implementation under test).
fn decimal_to_hex(decimal: &str) -> String {
    let mut digits: Vec<u32> = decimal.bytes().map(|b| u32::from(b - b'0')).collect();
    let mut nibbles = Vec::new();
    while digits.iter().any(|&d| d != 0) {
        let mut remainder = 0;
        for d in digits.iter_mut() {
            let current = remainder * 10 + *d;
            *d = current / 16;
            remainder = current % 16;
        }
        nibbles.push(char::from_digit(remainder, 16).unwrap());
    }
    if nibbles.is_empty() {
        nibbles.push('0');
    }
    nibbles.iter().rev().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_suites_print_back_as_written(text in suite_text()) {
        let suite: Suite = text.parse().unwrap();
        prop_assert_eq!(suite.to_string(), text.clone());
        prop_assert_eq!(suite.as_str(), text.as_str());
        let reparsed: Suite = suite.to_string().parse().unwrap();
        prop_assert_eq!(reparsed, suite);
    }

    #[test]
    fn any_string_parses_or_errs_and_what_parses_prints_back(text in "[A-Z0-9:-]{0,48}|OCRA-1:HOTP-SHA[0-9]{1,3}-[0-9]{1,2}:[CQANHPSTMH0-9-]{0,24}") {
        if let Ok(suite) = text.parse::<Suite>() {
            prop_assert_eq!(suite.to_string(), text);
        }
    }

    #[test]
    fn data_input_has_the_rfc_layout(
        case in suite_and_input()
    ) {
        let Case { suite, counter, question, pin, session, timestamp } = &case;
        let input = case.input();
        let bytes = data_input(suite, &input).unwrap();

        let suite_len = suite.as_str().len();
        let pin_len = suite.pin().map_or(0, HashAlgorithm::output_len);
        let session_len = suite.session_len().map_or(0, usize::from);
        let expected_len = suite_len + 1
            + if counter.is_some() { 8 } else { 0 }
            + QUESTION_BYTES + pin_len + session_len
            + if timestamp.is_some() { 8 } else { 0 };
        prop_assert_eq!(bytes.len(), expected_len);

        let (head, rest) = bytes.split_at(suite_len);
        prop_assert_eq!(head, suite.as_str().as_bytes());
        prop_assert_eq!(rest[0], 0);
        let mut rest = &rest[1..];
        if let Some(c) = counter {
            prop_assert_eq!(&rest[..8], &c.to_be_bytes());
            rest = &rest[8..];
        }
        let expected_question = reference_question(suite.question_format(), question);
        prop_assert_eq!(&rest[..QUESTION_BYTES], expected_question.as_slice());
        rest = &rest[QUESTION_BYTES..];
        if let Some(p) = &pin {
            prop_assert_eq!(&rest[..pin_len], p.as_slice());
            rest = &rest[pin_len..];
        }
        if let Some(s) = &session {
            // Right-aligned: zeros first, then the bytes given.
            let pad = session_len - s.len();
            prop_assert!(rest[..pad].iter().all(|&b| b == 0));
            prop_assert_eq!(&rest[pad..session_len], s.as_slice());
            rest = &rest[session_len..];
        }
        if let Some(t) = timestamp {
            prop_assert_eq!(rest, &t.to_be_bytes());
        } else {
            prop_assert!(rest.is_empty());
        }
    }

    #[test]
    fn responses_have_the_suite_length_and_only_the_right_one_verifies(
        case in suite_and_input(),
        key in proptest::collection::vec(any::<u8>(), 1..=64),
        flip in any::<prop::sample::Index>(),
    ) {
        let suite = &case.suite;
        let input = case.input();
        let ocra = Ocra::new(suite.clone(), &SecretKey::from_bytes(key).unwrap());
        let response = ocra.respond(&input).unwrap();
        prop_assert_eq!(response.len(), suite.response_len());
        if suite.digits() > 0 {
            prop_assert!(response.as_str().bytes().all(|b| b.is_ascii_digit()));
        } else {
            prop_assert!(response.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        }
        prop_assert!(ocra.verify(&input, response.as_bytes()).unwrap());
        let mut wrong = response.as_bytes().to_vec();
        let i = flip.index(wrong.len());
        wrong[i] = if wrong[i] == b'0' { b'1' } else { b'0' };
        prop_assert!(!ocra.verify(&input, &wrong).unwrap());
        prop_assert!(!ocra.verify(&input, &response.as_bytes()[1..]).unwrap());
    }
}

#[test]
fn inputs_that_do_not_fit_the_suite_are_typed_errors() {
    let suite: Suite = "OCRA-1:HOTP-SHA256-8:C-QN08-PSHA1-S004-T1M"
        .parse()
        .unwrap();
    let pin = [0u8; 20];
    let ok = OcraInput {
        counter: Some(1),
        question: "12345678",
        pin_hash: Some(&pin),
        session: Some(b"abcd"),
        timestamp: Some(5),
    };
    assert!(data_input(&suite, &ok).is_ok());
    let cases = [
        (
            OcraInput {
                counter: None,
                ..ok
            },
            InputError::MissingCounter,
        ),
        (
            OcraInput {
                pin_hash: None,
                ..ok
            },
            InputError::MissingPin,
        ),
        (
            OcraInput {
                pin_hash: Some(&pin[..19]),
                ..ok
            },
            InputError::PinHashLength {
                expected: 20,
                got: 19,
            },
        ),
        (
            OcraInput {
                session: None,
                ..ok
            },
            InputError::MissingSession,
        ),
        (
            OcraInput {
                session: Some(b"abcde"),
                ..ok
            },
            InputError::SessionTooLong { max: 4, got: 5 },
        ),
        (
            OcraInput {
                timestamp: None,
                ..ok
            },
            InputError::MissingTimestamp,
        ),
        (OcraInput { question: "", ..ok }, InputError::EmptyQuestion),
    ];
    for (input, expected) in cases {
        assert_eq!(data_input(&suite, &input).unwrap_err(), expected);
    }
    let plain: Suite = "OCRA-1:HOTP-SHA1-6:QN08".parse().unwrap();
    let q = OcraInput {
        question: "1",
        ..Default::default()
    };
    assert_eq!(
        data_input(
            &plain,
            &OcraInput {
                counter: Some(0),
                ..q
            }
        )
        .unwrap_err(),
        InputError::UnexpectedCounter
    );
    assert_eq!(
        data_input(
            &plain,
            &OcraInput {
                pin_hash: Some(&pin),
                ..q
            }
        )
        .unwrap_err(),
        InputError::UnexpectedPin
    );
    assert_eq!(
        data_input(
            &plain,
            &OcraInput {
                session: Some(b"x"),
                ..q
            }
        )
        .unwrap_err(),
        InputError::UnexpectedSession
    );
    assert_eq!(
        data_input(
            &plain,
            &OcraInput {
                timestamp: Some(1),
                ..q
            }
        )
        .unwrap_err(),
        InputError::UnexpectedTimestamp
    );
}
