//! Property: changing any single byte of the body, the timestamp or the signature of a valid
//! delivery makes verification fail, for every scheme that signs those bytes as sent.
//!
//! Two exceptions are excluded on purpose. Hex digits may change case, because hex
//! signatures are compared by value. Twilio signs decoded form parameters rather than the raw
//! body, so `+` and `%20` in its body are the same byte to the signature.

use super::*;
use crate::config::{HmacConfig, SecretBytes};
use axum::http::{HeaderName, HeaderValue};
use proptest::prelude::*;

const SECRET: &[u8] = b"property-test-secret";
const NOW: u64 = 1_700_000_000;

/// A signed delivery and where its signature and timestamp are.
struct Delivery {
    scheme: Box<dyn Scheme>,
    headers: HeaderMap,
    signature: &'static str,
    timestamp: Option<&'static str>,
    hex_signature: bool,
}

fn keys() -> Vec<SecretBytes> {
    vec![SecretBytes::new(SECRET.to_vec())]
}

fn header_map(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

fn signed_delivery(case: usize, body: &[u8]) -> Delivery {
    let tolerance = Duration::from_secs(300);
    let ts = NOW.to_string();
    match case {
        0 => Delivery {
            scheme: Box::new(Github::new(keys())),
            headers: header_map(&[("x-hub-signature-256", Github::sign(SECRET, body))]),
            signature: "x-hub-signature-256",
            timestamp: None,
            hex_signature: true,
        },
        1 => Delivery {
            // The timestamp is part of the one header, so changing the header covers both.
            scheme: Box::new(Stripe::new(keys(), tolerance)),
            headers: header_map(&[("stripe-signature", Stripe::sign(SECRET, NOW, body))]),
            signature: "stripe-signature",
            timestamp: None,
            hex_signature: true,
        },
        2 => Delivery {
            scheme: Box::new(Shopify::new(keys())),
            headers: header_map(&[("x-shopify-hmac-sha256", Shopify::sign(SECRET, body))]),
            signature: "x-shopify-hmac-sha256",
            timestamp: None,
            hex_signature: false,
        },
        3 => Delivery {
            scheme: Box::new(Slack::new(keys(), tolerance)),
            headers: header_map(&[
                ("x-slack-signature", Slack::sign(SECRET, NOW, body)),
                ("x-slack-request-timestamp", ts),
            ]),
            signature: "x-slack-signature",
            timestamp: Some("x-slack-request-timestamp"),
            hex_signature: true,
        },
        4 => Delivery {
            scheme: Box::new(Standard::new(keys(), tolerance)),
            headers: header_map(&[
                ("webhook-id", "msg_1".to_owned()),
                ("webhook-timestamp", ts),
                (
                    "webhook-signature",
                    Standard::sign(SECRET, "msg_1", NOW, body),
                ),
            ]),
            signature: "webhook-signature",
            timestamp: Some("webhook-timestamp"),
            hex_signature: false,
        },
        5 => Delivery {
            scheme: Box::new(Makini::new(keys())),
            headers: header_map(&[("x-webhook-signature", Makini::sign_base64(SECRET, body))]),
            signature: "x-webhook-signature",
            timestamp: None,
            hex_signature: false,
        },
        _ => {
            let settings: HmacConfig = toml::from_str(
                "header = \"x-signature\"\nprefix = \"v1=\"\nalgorithm = \"sha512\"\n\
                 signed_content = \"timestamp_body\"\ntimestamp_header = \"x-timestamp\"",
            )
            .unwrap();
            let scheme = GenericHmac::new(keys(), &settings, tolerance).unwrap();
            let signature = scheme.sign(SECRET, Some(NOW), body);
            Delivery {
                scheme: Box::new(scheme),
                headers: header_map(&[("x-signature", signature), ("x-timestamp", ts)]),
                signature: "x-signature",
                timestamp: Some("x-timestamp"),
                hex_signature: true,
            }
        }
    }
}

const CASES: usize = 7;
/// The cases whose timestamp has a header of its own: Slack, Standard Webhooks, generic HMAC.
const TIMESTAMP_CASES: [usize; 3] = [3, 4, 6];

fn verify(delivery: &Delivery, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
    delivery
        .scheme
        .verify(&SignedRequest::new(headers, body), now)
}

/// Replaces the byte at `index` (modulo the length) of header `name` with `byte`, or returns
/// `None` when that change is no change or an equivalent hex digit.
fn tamper_header(
    headers: &HeaderMap,
    name: &'static str,
    index: usize,
    byte: u8,
    hex: bool,
) -> Option<HeaderMap> {
    let mut value = headers.get(name)?.as_bytes().to_vec();
    let index = index % value.len();
    let old = value[index];
    if old == byte || (hex && old.eq_ignore_ascii_case(&byte)) {
        return None;
    }
    value[index] = byte;
    let mut tampered = headers.clone();
    tampered.insert(name, HeaderValue::from_bytes(&value).ok()?);
    Some(tampered)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn untouched_delivery_verifies(case in 0..CASES, body in proptest::collection::vec(any::<u8>(), 1..256)) {
        let delivery = signed_delivery(case, &body);
        prop_assert!(verify(&delivery, &delivery.headers, &body).is_ok());
    }

    #[test]
    fn changed_body_byte_rejected(
        case in 0..CASES,
        body in proptest::collection::vec(any::<u8>(), 1..256),
        index in any::<usize>(),
        byte in any::<u8>(),
    ) {
        let delivery = signed_delivery(case, &body);
        let mut tampered = body.clone();
        let index = index % tampered.len();
        prop_assume!(tampered[index] != byte);
        tampered[index] = byte;
        prop_assert!(verify(&delivery, &delivery.headers, &tampered).is_err());
    }

    #[test]
    fn changed_signature_byte_rejected(
        case in 0..CASES,
        body in proptest::collection::vec(any::<u8>(), 1..256),
        index in any::<usize>(),
        byte in 0x21u8..0x7f,
    ) {
        let delivery = signed_delivery(case, &body);
        let tampered = tamper_header(
            &delivery.headers, delivery.signature, index, byte, delivery.hex_signature,
        );
        prop_assume!(tampered.is_some());
        let tampered = tampered.unwrap();
        prop_assert!(verify(&delivery, &tampered, &body).is_err());
    }

    #[test]
    fn changed_timestamp_byte_rejected(
        case in proptest::sample::select(TIMESTAMP_CASES.to_vec()),
        body in proptest::collection::vec(any::<u8>(), 1..64),
        index in any::<usize>(),
        byte in 0x21u8..0x7f,
    ) {
        let delivery = signed_delivery(case, &body);
        let name = delivery.timestamp.expect("the case signs a timestamp header");
        let tampered = tamper_header(&delivery.headers, name, index, byte, false);
        prop_assume!(tampered.is_some());
        let tampered = tampered.unwrap();
        prop_assert!(verify(&delivery, &tampered, &body).is_err());
    }
}
