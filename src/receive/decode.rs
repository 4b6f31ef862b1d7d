//! Decoding of compressed request bodies (`Content-Encoding`), capped at the source's body
//! limit so that a small compressed body cannot expand without bound.

use super::ReceiveError;
use axum::body::Bytes;
use axum::http::{HeaderMap, header};
use flate2::read::{MultiGzDecoder, ZlibDecoder};
use std::io::Read;

/// Content codings a source may list in `content_encodings`.
pub const SUPPORTED_ENCODINGS: &[&str] = &["identity", "gzip", "x-gzip", "deflate"];

/// Returns whether `coding` is one of [`SUPPORTED_ENCODINGS`], ignoring case.
pub fn is_supported(coding: &str) -> bool {
    SUPPORTED_ENCODINGS
        .iter()
        .any(|supported| supported.eq_ignore_ascii_case(coding))
}

/// Returns `coding` in lowercase, with `x-gzip` read as `gzip` (RFC 9110).
pub fn canonical_coding(coding: &str) -> String {
    let coding = coding.trim().to_ascii_lowercase();
    match coding.as_str() {
        "x-gzip" => "gzip".to_owned(),
        _ => coding,
    }
}

/// Returns whether the `Content-Encoding` headers name any coding besides `identity`.
pub fn is_encoded(headers: &HeaderMap) -> bool {
    !codings(headers).is_empty()
}

/// Returns the codings of the `Content-Encoding` headers other than `identity`, in the order
/// they were applied.
fn codings(headers: &HeaderMap) -> Vec<String> {
    let mut codings = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        // The policy check has already rejected values that are not visible ASCII.
        let text = value.to_str().unwrap_or_default();
        codings.extend(
            text.split(',')
                .map(canonical_coding)
                .filter(|coding| !coding.is_empty() && coding != "identity"),
        );
    }
    codings
}

/// Decodes every coding of the `Content-Encoding` headers, last applied first, and returns the
/// body the sender compressed. Each decoded stage stops at `limit + 1` bytes, so a
/// decompression bomb is rejected with 413 after at most that much output. Corrupt data is a
/// 400.
pub fn decode_body(body: Bytes, headers: &HeaderMap, limit: usize) -> Result<Bytes, ReceiveError> {
    let mut body = body;
    for coding in codings(headers).iter().rev() {
        body = decode_one(coding, &body, limit)?;
    }
    Ok(body)
}

fn decode_one(coding: &str, data: &[u8], limit: usize) -> Result<Bytes, ReceiveError> {
    // `deflate` in HTTP is the zlib format (RFC 9110).
    let decoder: Box<dyn Read + '_> = match coding {
        "gzip" => Box::new(MultiGzDecoder::new(data)),
        "deflate" => Box::new(ZlibDecoder::new(data)),
        other => {
            return Err(ReceiveError::UnsupportedMediaType(format!(
                "content encoding {other:?} cannot be decoded; supported: {}",
                SUPPORTED_ENCODINGS.join(", ")
            )));
        }
    };

    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut decoded = Vec::new();
    decoder
        .take(cap)
        .read_to_end(&mut decoded)
        .map_err(|error| ReceiveError::BodyDecode {
            coding: coding.to_owned(),
            detail: error.to_string(),
        })?;
    if decoded.len() > limit {
        return Err(ReceiveError::TooLarge { limit });
    }
    Ok(decoded.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use flate2::Compression;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn encoded(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::CONTENT_ENCODING, HeaderValue::from_static(value));
        }
        headers
    }

    fn decode(data: Vec<u8>, values: &[&'static str], limit: usize) -> Result<Bytes, ReceiveError> {
        decode_body(data.into(), &encoded(values), limit)
    }

    #[test]
    fn identity_left_as_is() {
        let body = decode(b"{}".to_vec(), &[], 10).unwrap();
        assert_eq!(&body[..], b"{}");
        let body = decode(b"{}".to_vec(), &["identity"], 10).unwrap();
        assert_eq!(&body[..], b"{}");
    }

    #[test]
    fn gzip_and_deflate_decoded() {
        let json = br#"{"event":"a"}"#;
        assert_eq!(&decode(gzip(json), &["gzip"], 100).unwrap()[..], json);
        assert_eq!(&decode(gzip(json), &["X-GZIP"], 100).unwrap()[..], json);
        assert_eq!(&decode(zlib(json), &["deflate"], 100).unwrap()[..], json);
    }

    #[test]
    fn stacked_codings_undone_in_reverse() {
        let json = br#"{"event":"a"}"#;
        let twice = gzip(&zlib(json));
        assert_eq!(
            &decode(twice.clone(), &["deflate, gzip"], 100).unwrap()[..],
            json
        );
        assert_eq!(
            &decode(twice, &["deflate", "identity", "gzip"], 100).unwrap()[..],
            json
        );
    }

    #[test]
    fn output_over_limit_is_too_large() {
        let zeros = vec![0u8; 1000];
        assert_eq!(decode(gzip(&zeros), &["gzip"], 1000).unwrap().len(), 1000);
        let result = decode(gzip(&zeros), &["gzip"], 999);
        assert!(
            matches!(result, Err(ReceiveError::TooLarge { limit: 999 })),
            "{result:?}"
        );
    }

    #[test]
    fn corrupt_data_is_a_decode_error() {
        let mut data = gzip(br#"{"event":"a"}"#);
        let middle = data.len() / 2;
        data[middle] ^= 0xff;
        let cases = [
            ("flipped byte", data, "gzip"),
            ("not gzip", b"plain text".to_vec(), "gzip"),
            ("not zlib", b"plain text".to_vec(), "deflate"),
            ("truncated", gzip(b"0123456789")[..12].to_vec(), "gzip"),
            ("empty gzip", Vec::new(), "gzip"),
            ("empty deflate", Vec::new(), "deflate"),
            (
                "gzip with trailing bytes",
                [gzip(b"{}"), b"junk".to_vec()].concat(),
                "gzip",
            ),
        ];
        for (case, data, coding) in cases {
            let result = decode_body(data.into(), &encoded(&[coding]), 100);
            assert!(
                matches!(result, Err(ReceiveError::BodyDecode { .. })),
                "{case}: {result:?}"
            );
        }
    }
}
