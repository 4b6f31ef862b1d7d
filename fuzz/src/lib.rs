//! The functions the fuzz targets and the seed replay test call.
//!
//! A fuzz input is a request in a small text form, so that seeds can be written by hand:
//!
//! ```text
//! name: value          one header per line, sent as raw bytes
//! ?query               optional: the URL query string, without the `?`
//!                      an empty line
//! body                 everything after the empty line, as raw bytes
//! ```
//!
//! A header line that the HTTP server would reject (an invalid name, or a value with a line
//! break or NUL) is skipped, because such a request never reaches a scheme.

use hookrelay::config::{HmacAlgorithm, HmacConfig, SecretBytes, SignatureEncoding, SignedContent};
use hookrelay::receive::{SourceRuntime, identify as identify_event};
use hookrelay::verify::{
    GenericHmac, Github, Makini, NoVerification, Scheme, Shopify, SignedRequest, Slack, Standard,
    Stripe, Twilio, Verified, standard_decode_secret,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The time every verification runs at, in seconds since the Unix epoch, so that seeds signed
/// at this time stay inside the timestamp tolerance.
pub const NOW_SECS: u64 = 1_700_000_000;

/// The timestamp tolerance of the schemes that sign one.
const TOLERANCE: Duration = Duration::from_secs(300);

/// Secret of every scheme except Standard Webhooks; the seeds are signed with it.
pub const SECRET: &str = "fuzz-secret";

/// Standard Webhooks secret: the key is the base64 after `whsec_`.
pub const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// URL the Twilio scheme expects to have been signed.
pub const TWILIO_URL: &str = "https://hooks.example.com/webhooks/twilio";

/// The schemes with a fuzz target each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemeName {
    Makini,
    Standard,
    Github,
    Stripe,
    Shopify,
    Slack,
    Twilio,
    Hmac,
}

impl SchemeName {
    pub const ALL: [SchemeName; 8] = [
        Self::Makini,
        Self::Standard,
        Self::Github,
        Self::Stripe,
        Self::Shopify,
        Self::Slack,
        Self::Twilio,
        Self::Hmac,
    ];

    /// Name of the fuzz target, which is also its corpus directory.
    pub fn target(self) -> &'static str {
        match self {
            Self::Makini => "verify_makini",
            Self::Standard => "verify_standard",
            Self::Github => "verify_github",
            Self::Stripe => "verify_stripe",
            Self::Shopify => "verify_shopify",
            Self::Slack => "verify_slack",
            Self::Twilio => "verify_twilio",
            Self::Hmac => "verify_hmac",
        }
    }

    fn scheme(self) -> &'static dyn Scheme {
        match self {
            Self::Makini => &*MAKINI,
            Self::Standard => &*STANDARD,
            Self::Github => &*GITHUB,
            Self::Stripe => &*STRIPE,
            Self::Shopify => &*SHOPIFY,
            Self::Slack => &*SLACK,
            Self::Twilio => &*TWILIO,
            Self::Hmac => &*HMAC,
        }
    }
}

fn secrets() -> Vec<SecretBytes> {
    vec![SecretBytes::new(SECRET.as_bytes().to_vec())]
}

static MAKINI: LazyLock<Makini> = LazyLock::new(|| Makini::new(secrets()));
static STANDARD: LazyLock<Standard> = LazyLock::new(|| {
    let key = standard_decode_secret(STANDARD_SECRET).expect("valid Standard Webhooks secret");
    Standard::new(vec![key], TOLERANCE)
});
static GITHUB: LazyLock<Github> = LazyLock::new(|| Github::new(secrets()));
static STRIPE: LazyLock<Stripe> = LazyLock::new(|| Stripe::new(secrets(), TOLERANCE));
static SHOPIFY: LazyLock<Shopify> = LazyLock::new(|| Shopify::new(secrets()));
static SLACK: LazyLock<Slack> = LazyLock::new(|| Slack::new(secrets(), TOLERANCE));
static TWILIO: LazyLock<Twilio> =
    LazyLock::new(|| Twilio::new(secrets(), TWILIO_URL).expect("valid Twilio URL"));
/// The generic scheme in its richest form: a prefix, a timestamp header and a separator.
static HMAC: LazyLock<GenericHmac> = LazyLock::new(|| {
    let settings = HmacConfig {
        header: "x-signature".into(),
        prefix: "sha256=".into(),
        algorithm: HmacAlgorithm::Sha256,
        encoding: SignatureEncoding::Hex,
        signed_content: SignedContent::TimestampBody,
        timestamp_header: Some("x-timestamp".into()),
        separator: ".".into(),
    };
    GenericHmac::new(secrets(), &settings, TOLERANCE).expect("valid hmac settings")
});

/// A request decoded from a fuzz input.
pub struct Request {
    pub headers: HeaderMap,
    pub query: Option<String>,
    pub body: Vec<u8>,
}

impl Request {
    /// Decodes `data` in the form the module documentation describes.
    pub fn parse(data: &[u8]) -> Self {
        let (head, body) = match data.windows(2).position(|pair| pair == b"\n\n") {
            Some(end) => (&data[..end], &data[end + 2..]),
            None => (data, &[][..]),
        };
        let mut headers = HeaderMap::new();
        let mut query = None;
        for line in head.split(|&byte| byte == b'\n') {
            if let Some(text) = line.strip_prefix(b"?") {
                query = Some(String::from_utf8_lossy(text).into_owned());
                continue;
            }
            let Some(colon) = line.iter().position(|&byte| byte == b':') else {
                continue;
            };
            let value = line[colon + 1..].trim_ascii_start();
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
        }
        Self {
            headers,
            query,
            body: body.to_vec(),
        }
    }

    fn signed(&self) -> SignedRequest<'_> {
        SignedRequest {
            headers: &self.headers,
            query: self.query.as_deref(),
            body: &self.body,
        }
    }
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

/// Verifies the request in `data` with `scheme` and returns the outcome. Any panic is a bug.
pub fn verify_outcome(
    scheme: SchemeName,
    data: &[u8],
) -> Result<Verified, hookrelay::verify::VerifyError> {
    let request = Request::parse(data);
    scheme.scheme().verify(&request.signed(), now())
}

/// Verifies the request in `data` with `scheme`, ignoring the outcome: the verification fuzz
/// targets look for panics only.
pub fn verify(scheme: SchemeName, data: &[u8]) {
    let _ = verify_outcome(scheme, data);
}

/// A source without a signature whose event id and type come from a header and JSON pointers,
/// with pointers into arrays and nested objects.
static SOURCE: LazyLock<SourceRuntime> = LazyLock::new(|| SourceRuntime {
    name: "fuzz".into(),
    scheme: Box::new(NoVerification),
    body_limit: 1024 * 1024,
    id_headers: vec![HeaderName::from_static("x-event-id")],
    id_pointers: vec!["/id".into(), "/data/id".into(), "/events/0/id".into()],
    event_type_pointer: Some("/type".into()),
    dedupe_window: Duration::from_secs(3600),
    body_hash_window: Duration::from_secs(600),
    content_types: vec!["application/json".into()],
    content_encodings: Vec::new(),
    allowed_ips: None,
});

/// Maximum length of an idempotency key id before it is replaced by its hash, as in
/// `receive::identify`; the hash form `long:<64 hex>` is shorter.
const MAX_KEY_ID_LEN: usize = 200;

/// Identifies the event in `data` twice and checks each identity. The first pass takes the
/// headers `x-verified-id` and `x-verified-type` as what a scheme found in its own headers. The
/// second pass reads the pointers from the body as a scheme's embedded JSON document.
pub fn identify(data: &[u8]) {
    let request = Request::parse(data);
    let text = |name: &str| {
        request
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let from_headers = Verified {
        event_id: text("x-verified-id"),
        event_type: text("x-verified-type"),
        ..Verified::default()
    };
    let from_document = Verified {
        document: Some(String::from_utf8_lossy(&request.body).into_owned()),
        ..Verified::default()
    };

    for verified in [from_headers, from_document] {
        let identity = identify_event(&SOURCE, &request.headers, &request.body, verified);
        assert!(!identity.event_id.is_empty(), "an event always has an id");
        assert!(identity.dedupe_key.starts_with("fuzz:"));
        assert!(identity.dedupe_key.len() <= "fuzz:".len() + MAX_KEY_ID_LEN);
        assert!(!identity.window.is_zero());
    }
}
