//! Twilio: `X-Twilio-Signature` carries the base64 HMAC-SHA1, keyed with the account's auth
//! token, of the full URL Twilio requested followed by every form parameter's name and value,
//! sorted by name (byte order) and then by value.
//!
//! Behind ngrok or a proxy the URL the receiver gets differs from the one Twilio signed, so
//! the source is configured with its `public_url`; the query string of the request is
//! appended to it. Twilio's own libraries also try the URL with the default port added or
//! removed, because Twilio has signed both forms, and so does this scheme.
//!
//! A JSON body is not in the signed string. Twilio then adds `bodySHA256=<hex>` to the URL's
//! query, so the URL signature covers the body's hash, and the hash is checked here as well.

use super::makini::BASE64;
use super::{
    Scheme, SignatureHeader, SignedRequest, Verified, VerifyError, any_secret_matches,
    decoded_signatures, header_text, hmac_of, is_form, macs_equal,
};
use crate::config::{HmacAlgorithm, SecretBytes};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::time::SystemTime;

const SIGNATURE: &str = "x-twilio-signature";
/// Twilio sends the same token with every retry of one webhook request.
const IDEMPOTENCY_TOKEN: &str = "i-twilio-idempotency-token";

#[derive(Debug)]
pub struct Twilio {
    secrets: Vec<SecretBytes>,
    /// The configured public URL, then the same URL with its default port toggled.
    url_forms: Vec<String>,
}

impl Twilio {
    /// Builds the scheme for `public_url`, an absolute `http` or `https` URL without query.
    pub fn new(secrets: Vec<SecretBytes>, public_url: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(public_url)
            .map_err(|e| format!("public_url {public_url:?} is not a valid URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("public_url {public_url:?} must use http or https"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!(
                "public_url {public_url:?} must have no query or fragment; the request's query is appended"
            ));
        }
        let mut url_forms = vec![public_url.to_owned()];
        url_forms.extend(toggle_default_port(public_url));
        Ok(Self { secrets, url_forms })
    }

    /// Returns the `X-Twilio-Signature` value for a request to `url` (query included).
    pub fn sign(secret: &[u8], url: &str, body: &[u8], form: bool) -> String {
        BASE64.encode(hmac_of(
            HmacAlgorithm::Sha1,
            secret,
            &[signed_string(url, body, form).as_bytes()],
        ))
    }
}

/// Returns `url` with `:443` (https) or `:80` (http) added after the host, or removed when
/// it is there.
fn toggle_default_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let toggled = match authority.strip_suffix(default) {
        Some(host) => host.to_owned(),
        // An IPv6 literal ends in `]`; any other `:` after it means an explicit port.
        None if authority
            .rsplit_once(']')
            .map_or(authority, |(_, tail)| tail)
            .contains(':') =>
        {
            return None;
        }
        None => format!("{authority}{default}"),
    };
    Some(format!("{scheme}://{toggled}{path}"))
}

/// Builds the signed string: the URL, then the sorted form parameters of a form body.
fn signed_string(url: &str, body: &[u8], form: bool) -> String {
    let mut text = url.to_owned();
    if form {
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        pairs.sort();
        for (name, value) in pairs {
            text.push_str(&name);
            text.push_str(&value);
        }
    }
    text
}

/// Checks the `bodySHA256` query parameter of a non-form request against the body.
fn check_body_hash(query: Option<&str>, body: &[u8]) -> Result<(), VerifyError> {
    let declared = query
        .and_then(|query| {
            form_urlencoded::parse(query.as_bytes()).find(|(name, _)| name == "bodySHA256")
        })
        .map(|(_, value)| value.into_owned())
        .ok_or(VerifyError::Malformed {
            header: "Content-Type",
            reason: "a body that is not form-encoded needs bodySHA256 in the URL query",
        })?;
    let declared = hex::decode(declared).map_err(|_| VerifyError::Mismatch)?;
    match macs_equal(&Sha256::digest(body), &declared) {
        true => Ok(()),
        false => Err(VerifyError::Mismatch),
    }
}

impl Scheme for Twilio {
    fn verify(
        &self,
        request: &SignedRequest<'_>,
        _now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let headers = request.headers;
        let header = SignatureHeader {
            name: SIGNATURE,
            display: "X-Twilio-Signature",
            expected: "not base64",
        };
        let given = decoded_signatures(headers, &header, |value| {
            BASE64.decode(value.trim_ascii()).ok()
        })?;

        let form = is_form(headers);
        if !form {
            check_body_hash(request.query, request.body)?;
        }
        let mut matched = false;
        for base in &self.url_forms {
            let url = match request.query {
                Some(query) => format!("{base}?{query}"),
                None => base.clone(),
            };
            let signed = signed_string(&url, request.body, form);
            matched |= any_secret_matches(&self.secrets, &given, |key| {
                hmac_of(HmacAlgorithm::Sha1, key, &[signed.as_bytes()])
            });
        }
        match matched {
            true => Ok(Verified {
                event_id: header_text(headers, IDEMPOTENCY_TOKEN).map(str::to_owned),
                ..Verified::default()
            }),
            false => Err(VerifyError::Mismatch),
        }
    }

    fn default_content_types(&self) -> &'static [&'static str] {
        &["application/x-www-form-urlencoded", "application/json"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    const TOKEN: &[u8] = b"twilio-auth-token";
    const PUBLIC_URL: &str = "https://abc123.ngrok.app/webhooks/twilio";
    const BODY: &[u8] =
        b"To=%2B18005551212&From=%2B14158675310&Body=Hello+there&MessageSid=SM123&AccountSid=AC1";

    fn scheme() -> Twilio {
        Twilio::new(vec![SecretBytes::new(TOKEN.to_vec())], PUBLIC_URL).unwrap()
    }

    fn headers(values: &[&str], content_type: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(SIGNATURE, HeaderValue::from_str(value).unwrap());
        }
        headers.insert("content-type", HeaderValue::from_static(content_type));
        headers
    }

    fn form_headers(values: &[&str]) -> HeaderMap {
        headers(values, "application/x-www-form-urlencoded")
    }

    fn verify(
        headers: &HeaderMap,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Verified, VerifyError> {
        let request = SignedRequest {
            headers,
            query,
            body,
        };
        scheme().verify(&request, SystemTime::now())
    }

    #[test]
    fn signed_string_sorts_decoded_parameters() {
        let expected = format!(
            "{PUBLIC_URL}AccountSidAC1BodyHello thereFrom+14158675310MessageSidSM123To+18005551212"
        );
        assert_eq!(signed_string(PUBLIC_URL, BODY, true), expected);
    }

    #[test]
    fn signature_matches_independent_construction() {
        let data = signed_string(PUBLIC_URL, BODY, true);
        let expected = BASE64.encode(hmac_of(HmacAlgorithm::Sha1, TOKEN, &[data.as_bytes()]));
        assert_eq!(Twilio::sign(TOKEN, PUBLIC_URL, BODY, true), expected);
        assert_eq!(expected.len(), 28);
    }

    #[test]
    fn form_signature_accepted() {
        let signature = Twilio::sign(TOKEN, PUBLIC_URL, BODY, true);
        assert!(verify(&form_headers(&[&signature]), None, BODY).is_ok());
    }

    #[test]
    fn query_string_is_part_of_signed_url() {
        let signed_url = format!("{PUBLIC_URL}?tenant=7");
        let signature = Twilio::sign(TOKEN, &signed_url, BODY, true);
        assert!(verify(&form_headers(&[&signature]), Some("tenant=7"), BODY).is_ok());
        assert_eq!(
            verify(&form_headers(&[&signature]), Some("tenant=8"), BODY),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn local_url_signature_rejected() {
        let signature = Twilio::sign(TOKEN, "http://127.0.0.1:8080/webhooks/twilio", BODY, true);
        assert_eq!(
            verify(&form_headers(&[&signature]), None, BODY),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn url_with_default_port_accepted() {
        let with_port = "https://abc123.ngrok.app:443/webhooks/twilio";
        let signature = Twilio::sign(TOKEN, with_port, BODY, true);
        assert!(verify(&form_headers(&[&signature]), None, BODY).is_ok());
    }

    #[test]
    fn default_port_toggles_both_ways() {
        assert_eq!(
            toggle_default_port("https://h.example/p").as_deref(),
            Some("https://h.example:443/p")
        );
        assert_eq!(
            toggle_default_port("http://h.example:80/p").as_deref(),
            Some("http://h.example/p")
        );
        assert_eq!(toggle_default_port("https://h.example:8443/p"), None);
        assert_eq!(
            toggle_default_port("https://[::1]/p").as_deref(),
            Some("https://[::1]:443/p")
        );
    }

    #[test]
    fn reordered_parameters_still_accepted() {
        let signature = Twilio::sign(TOKEN, PUBLIC_URL, BODY, true);
        let reordered =
            b"AccountSid=AC1&MessageSid=SM123&Body=Hello%20there&From=%2B14158675310&To=%2B18005551212";
        assert!(verify(&form_headers(&[&signature]), None, reordered).is_ok());
    }

    #[test]
    fn changed_parameter_rejected() {
        let signature = Twilio::sign(TOKEN, PUBLIC_URL, BODY, true);
        let changed = b"To=%2B18005551212&From=%2B14158675310&Body=Hello+there&MessageSid=SM124&AccountSid=AC1";
        assert_eq!(
            verify(&form_headers(&[&signature]), None, changed),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn json_body_checked_by_hash_in_query() {
        let body = br#"{"event":"call.completed"}"#;
        let query = format!("bodySHA256={}", hex::encode(Sha256::digest(body)));
        let signature = Twilio::sign(TOKEN, &format!("{PUBLIC_URL}?{query}"), body, false);
        let headers = headers(&[&signature], "application/json");
        assert!(verify(&headers, Some(&query), body).is_ok());
        assert_eq!(
            verify(&headers, Some(&query), br#"{"event":"call.failed"}"#),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn json_body_without_hash_is_malformed() {
        let body = br#"{"event":"call.completed"}"#;
        let signature = Twilio::sign(TOKEN, PUBLIC_URL, body, false);
        let result = verify(&headers(&[&signature], "application/json"), None, body);
        assert!(
            matches!(result, Err(VerifyError::Malformed { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn missing_signature_rejected() {
        assert_eq!(
            verify(&form_headers(&[]), None, BODY),
            Err(VerifyError::MissingHeader("X-Twilio-Signature"))
        );
    }

    #[test]
    fn rotated_tokens_accepted() {
        let scheme = Twilio::new(
            vec![
                SecretBytes::new(b"old-token".to_vec()),
                SecretBytes::new(TOKEN.to_vec()),
            ],
            PUBLIC_URL,
        )
        .unwrap();
        let headers = form_headers(&[&Twilio::sign(b"old-token", PUBLIC_URL, BODY, true)]);
        let result = scheme.verify(&SignedRequest::new(&headers, BODY), SystemTime::now());
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn duplicated_header_accepts_any_valid_value() {
        let signature = Twilio::sign(TOKEN, PUBLIC_URL, BODY, true);
        assert!(verify(&form_headers(&["AAAA", &signature]), None, BODY).is_ok());
    }

    #[test]
    fn public_url_with_query_rejected_at_startup() {
        let result = Twilio::new(vec![], "https://h.example/p?x=1");
        assert!(result.is_err());
    }

    #[test]
    fn idempotency_token_is_event_id() {
        let mut headers = form_headers(&[&Twilio::sign(TOKEN, PUBLIC_URL, BODY, true)]);
        headers.insert(IDEMPOTENCY_TOKEN, HeaderValue::from_static("tok-1"));
        let verified = verify(&headers, None, BODY).unwrap();
        assert_eq!(verified.event_id.as_deref(), Some("tok-1"));
    }
}
