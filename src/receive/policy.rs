//! Per-source checks made before the body is read: which clients may post, and which
//! content types and encodings the source accepts.

use super::ReceiveError;
use super::decode::canonical_coding;
use axum::http::{HeaderMap, header};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// Rejects a request whose client address is outside `allowed`.
///
/// The client is the TCP peer, unless the peer is one of `trusted_proxies`: then
/// `X-Forwarded-For` is read from the right, skipping further trusted proxies, and the first
/// other address is the client. A peer that is not trusted cannot choose its address this
/// way, because its header is ignored.
pub fn check_client(
    allowed: &[IpNet],
    trusted_proxies: &[IpNet],
    peer: Option<IpAddr>,
    headers: &HeaderMap,
) -> Result<(), ReceiveError> {
    let client = peer.and_then(|peer| client_address(peer, trusted_proxies, headers));
    match client {
        Some(address) if allowed.iter().any(|range| range.contains(&address)) => Ok(()),
        _ => Err(ReceiveError::Forbidden {
            client: client.map_or_else(|| "unknown".to_owned(), |address| address.to_string()),
        }),
    }
}

/// Finds the client's address, or `None` when a forwarded hop is unreadable.
pub fn client_address(
    peer: IpAddr,
    trusted_proxies: &[IpNet],
    headers: &HeaderMap,
) -> Option<IpAddr> {
    let is_trusted = |address: &IpAddr| trusted_proxies.iter().any(|range| range.contains(address));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return Some(client);
    }

    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        hops.extend(value.to_str().ok()?.split(','));
    }
    for hop in hops.iter().rev() {
        client = parse_hop(hop.trim())?;
        if !is_trusted(&client) {
            break;
        }
    }
    Some(client)
}

/// Reads one `X-Forwarded-For` entry: an address, optionally with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let address = hop
        .parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()?;
    Some(address.to_canonical())
}

/// Rejects a body whose media type or content encoding the source does not accept.
/// Parameters such as `charset` do not matter. A request without `Content-Type` is accepted
/// only when `*/*` is.
pub fn check_content(
    accepted_types: &[String],
    accepted_encodings: &[String],
    headers: &HeaderMap,
) -> Result<(), ReceiveError> {
    let expected = || accepted_types.join(", ");
    let media = match headers.get(header::CONTENT_TYPE) {
        None if accepted_types.iter().any(|t| t == "*/*") => None,
        None => {
            return Err(ReceiveError::UnsupportedMediaType(format!(
                "missing Content-Type; expected one of: {}",
                expected()
            )));
        }
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.parse::<mime::Mime>().ok())
                .ok_or_else(|| {
                    ReceiveError::UnsupportedMediaType(format!(
                        "invalid Content-Type; expected one of: {}",
                        expected()
                    ))
                })?,
        ),
    };
    if let Some(media) = media
        && !accepted_types
            .iter()
            .any(|pattern| media_matches(pattern, &media))
    {
        return Err(ReceiveError::UnsupportedMediaType(format!(
            "content type {} is not accepted; expected one of: {}",
            media.essence_str(),
            expected()
        )));
    }

    // One coding at most besides identity: each stacked coding is another pass of up to
    // `body_limit` bytes, so a long list would multiply the work of one request.
    let mut compressions = 0;
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().unwrap_or("(not ASCII)");
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            let canonical = canonical_coding(coding);
            if !accepted_encodings
                .iter()
                .any(|accepted| canonical_coding(accepted) == canonical)
            {
                return Err(ReceiveError::UnsupportedMediaType(format!(
                    "content encoding {coding:?} is not accepted; expected one of: {}",
                    accepted_encodings.join(", ")
                )));
            }
            if canonical != "identity" {
                compressions += 1;
            }
        }
    }
    if compressions > 1 {
        return Err(ReceiveError::UnsupportedMediaType(
            "more than one content encoding is not accepted; compress the body once".into(),
        ));
    }
    Ok(())
}

/// Matches `application/json`, `application/*` or `*/*` against a parsed media type.
fn media_matches(pattern: &str, media: &mime::Mime) -> bool {
    match pattern.split_once('/') {
        Some(("*", "*")) => true,
        Some((kind, "*")) => kind.eq_ignore_ascii_case(media.type_().as_str()),
        _ => pattern.eq_ignore_ascii_case(media.essence_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ranges(texts: &[&str]) -> Vec<IpNet> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn json_only(pairs: &[(&'static str, &'static str)]) -> Result<(), ReceiveError> {
        check_content(
            &["application/json".into()],
            &["identity".into()],
            &headers(pairs),
        )
    }

    #[test]
    fn json_with_charset_accepted() {
        assert!(json_only(&[("content-type", "application/json; charset=utf-8")]).is_ok());
        assert!(json_only(&[("content-type", "Application/JSON;charset=\"UTF-8\"")]).is_ok());
    }

    #[test]
    fn other_media_type_rejected() {
        let result = json_only(&[("content-type", "text/plain")]);
        assert!(
            matches!(result, Err(ReceiveError::UnsupportedMediaType(_))),
            "{result:?}"
        );
    }

    #[test]
    fn missing_content_type_rejected() {
        let result = json_only(&[]);
        assert!(
            matches!(result, Err(ReceiveError::UnsupportedMediaType(_))),
            "{result:?}"
        );
    }

    #[test]
    fn wildcards_match() {
        let any = ["*/*".to_owned()];
        let identity = ["identity".to_owned()];
        assert!(check_content(&any, &identity, &headers(&[])).is_ok());
        assert!(check_content(&any, &identity, &headers(&[("content-type", "text/csv")])).is_ok());
        let application = ["application/*".to_owned()];
        let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        assert!(check_content(&application, &identity, &form).is_ok());
        let text = headers(&[("content-type", "text/csv")]);
        assert!(check_content(&application, &identity, &text).is_err());
    }

    #[test]
    fn compressed_body_rejected_by_default() {
        let result = json_only(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ]);
        assert!(
            matches!(result, Err(ReceiveError::UnsupportedMediaType(_))),
            "{result:?}"
        );
    }

    #[test]
    fn x_gzip_is_gzip() {
        let types = ["application/json".to_owned()];
        let x_gzip = headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "X-Gzip"),
        ]);
        assert!(check_content(&types, &["gzip".into()], &x_gzip).is_ok());
        let gzip = headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ]);
        assert!(check_content(&types, &["x-gzip".into()], &gzip).is_ok());
        assert!(check_content(&types, &["deflate".into()], &gzip).is_err());
    }

    #[test]
    fn stacked_encodings_rejected() {
        let types = ["application/json".to_owned()];
        let accepted = ["identity".to_owned(), "gzip".into(), "deflate".into()];
        let cases: [(&[&'static str], bool); 5] = [
            (&["gzip"], true),
            (&["identity, gzip, identity"], true),
            (&["deflate, gzip"], false),
            (&["gzip", "gzip"], false),
            (&["gzip", "identity", "deflate"], false),
        ];
        for (values, accepted_ok) in cases {
            let mut pairs = vec![("content-type", "application/json")];
            pairs.extend(values.iter().map(|value| ("content-encoding", *value)));
            let result = check_content(&types, &accepted, &headers(&pairs));
            assert_eq!(result.is_ok(), accepted_ok, "{values:?}: {result:?}");
        }
    }

    #[test]
    fn identity_encoding_accepted() {
        let result = json_only(&[
            ("content-type", "application/json"),
            ("content-encoding", "identity"),
        ]);
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn untrusted_peer_cannot_forward() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let headers = headers(&[("x-forwarded-for", "15.204.75.108")]);
        assert_eq!(
            client_address(ip("203.0.113.9"), &trusted, &headers),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn trusted_proxy_forwards_client() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let headers = headers(&[("x-forwarded-for", "15.204.75.108, 10.1.2.3")]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &trusted, &headers),
            Some(ip("15.204.75.108"))
        );
    }

    #[test]
    fn spoofed_leftmost_entry_ignored() {
        // The client wrote the first entry itself; the proxy appended the real address.
        let trusted = ranges(&["10.0.0.0/8"]);
        let headers = headers(&[("x-forwarded-for", "15.204.75.108, 198.51.100.7")]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &trusted, &headers),
            Some(ip("198.51.100.7"))
        );
    }

    #[test]
    fn repeated_header_read_in_order() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let headers = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-for", "10.9.9.9"),
        ]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &trusted, &headers),
            Some(ip("198.51.100.7"))
        );
    }

    #[test]
    fn unreadable_hop_gives_no_client() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let headers = headers(&[("x-forwarded-for", "unknown")]);
        assert_eq!(client_address(ip("10.0.0.1"), &trusted, &headers), None);
    }

    #[test]
    fn hop_with_port_and_mapped_ipv4_parsed() {
        assert_eq!(parse_hop("203.0.113.9:4711"), Some(ip("203.0.113.9")));
        assert_eq!(parse_hop("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("::ffff:203.0.113.9"), Some(ip("203.0.113.9")));
    }

    #[test]
    fn allow_list_checks_client() {
        let allowed = ranges(&["15.204.75.108/32", "2001:db8::/32"]);
        let none = HeaderMap::new();
        assert!(check_client(&allowed, &[], Some(ip("15.204.75.108")), &none).is_ok());
        assert!(check_client(&allowed, &[], Some(ip("2001:db8::5")), &none).is_ok());
        let result = check_client(&allowed, &[], Some(ip("15.204.75.109")), &none);
        assert!(
            matches!(result, Err(ReceiveError::Forbidden { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn unknown_peer_rejected_by_allow_list() {
        let allowed = ranges(&["0.0.0.0/0"]);
        let result = check_client(&allowed, &[], None, &HeaderMap::new());
        assert!(
            matches!(result, Err(ReceiveError::Forbidden { .. })),
            "{result:?}"
        );
    }
}
