//! `hookrelay check-config`: validates a config the way `serve` does and describes what it
//! would serve.
//!
//! The description names every secret by its reference (`env:NAME`, `file:PATH`) and never
//! by value, and shows each URL through [`redact_url`], so it can be pasted into a ticket.

use crate::app::{self, Parts, StartupError, redact_url};
use crate::config::{
    Config, HmacAlgorithm, HmacConfig, HttpBody, SignatureEncoding, SignedContent, SinkConfig,
    SinkKind, SourceConfig,
};
use crate::receive::SourceRuntime;
use humantime::format_duration;
use std::fmt::Write;
use std::path::Path;

/// Loads the config at `path` and the `HOOKRELAY_*` environment, resolves every secret and
/// builds the sinks and routes without connecting anywhere, then returns the description.
pub fn check_config(path: &Path) -> Result<String, StartupError> {
    let config = Config::load(Some(path))?;
    let parts = app::check(&config)?;
    Ok(describe(path, &config, &parts))
}

/// Renders what `config` would serve, secrets named by reference only.
pub fn describe(path: &Path, config: &Config, parts: &Parts) -> String {
    let mut out = String::new();
    line(&mut out, format!("config {} is valid", path.display()));
    line(&mut out, format!("listen: {}", config.listen));
    line(&mut out, format!("store: {}", describe_store(config)));
    line(&mut out, format!("worker: {}", describe_worker(config)));

    line(&mut out, format!("\nsources ({}):", config.sources.len()));
    // build_parts has a runtime for every configured source, so the index cannot miss.
    for source in &config.sources {
        describe_source(&mut out, source, &parts.sources[&source.name]);
    }

    line(&mut out, format!("\nroutes ({}):", config.routes.len()));
    for route in &config.routes {
        line(
            &mut out,
            format!(
                "  {} [{}] -> {}",
                route.source,
                route.events.join(", "),
                route.sinks.join(", ")
            ),
        );
    }

    line(&mut out, format!("\nsinks ({}):", config.sinks.len()));
    for sink in &config.sinks {
        line(&mut out, format!("  {}", describe_sink(sink)));
    }
    if parts.delivery.is_none() && !config.sinks.is_empty() {
        line(
            &mut out,
            "  (the worker is disabled, so serve builds none of these sinks)".to_owned(),
        );
    }

    let warnings = app::config_warnings(config);
    if !warnings.is_empty() {
        line(&mut out, format!("\nwarnings ({}):", warnings.len()));
        for warning in warnings {
            line(&mut out, format!("  {warning}"));
        }
    }
    out
}

fn line(out: &mut String, text: String) {
    out.push_str(&text);
    out.push('\n');
}

fn describe_store(config: &Config) -> String {
    match config.store.redis_url.as_deref() {
        Some(url) => format!(
            "redis {}, key prefix {:?}",
            redact_url(url),
            config.store.key_prefix
        ),
        None => format!(
            "embedded, data dir {} (one process only; set store.redis_url for several replicas)",
            config.store.data_dir.display()
        ),
    }
}

fn describe_worker(config: &Config) -> String {
    let worker = &config.worker;
    if !worker.enabled {
        return "disabled: events are received and stored, none forwarded".to_owned();
    }
    format!(
        "enabled, batch_size {}, max_attempts {}, backoff {} to {}, visibility_timeout {}, \
         sink_timeout {}",
        worker.batch_size,
        worker.max_attempts,
        format_duration(worker.backoff_initial),
        format_duration(worker.backoff_max),
        format_duration(worker.visibility_timeout),
        format_duration(worker.sink_timeout)
    )
}

/// Writes one source: its scheme and path, its secret references, and its policy keys with
/// the scheme's defaults filled in, as `runtime` applies them.
fn describe_source(out: &mut String, source: &SourceConfig, runtime: &SourceRuntime) {
    line(
        out,
        format!(
            "  {}: scheme {}, POST /webhooks/{}",
            source.name,
            source.scheme.name(),
            source.name
        ),
    );
    let secrets = if source.secrets.is_empty() {
        "none (scheme none verifies no signature)".to_owned()
    } else {
        source.secrets.join(", ")
    };

    let mut key = |name: &str, value: String| line(out, format!("    {name}: {value}"));
    key(&format!("secrets ({})", source.secrets.len()), secrets);
    if let Some(url) = &source.public_url {
        key("public_url", redact_url(url));
    }
    if let Some(hmac) = &source.hmac {
        key("hmac", describe_hmac(hmac));
    }

    key("body_limit", format!("{} bytes", runtime.body_limit));
    key("tolerance", format_duration(source.tolerance).to_string());
    key(
        "dedupe_window",
        format_duration(runtime.dedupe_window).to_string(),
    );
    key(
        "body_hash_window",
        format_duration(runtime.body_hash_window).to_string(),
    );

    key("content_types", list_or(&runtime.content_types, "none"));
    key(
        "content_encodings",
        list_or(&runtime.content_encodings, "none"),
    );
    let allowed_ips = match &runtime.allowed_ips {
        Some(ranges) => list_or(ranges, "none"),
        None => "any".to_owned(),
    };
    key("allowed_ips", allowed_ips);

    key(
        "id_headers",
        list_or(&source.id_headers, "the scheme's own"),
    );
    key("id_pointers", list_or(&runtime.id_pointers, "none"));
    key(
        "event_type_pointer",
        runtime
            .event_type_pointer
            .clone()
            .unwrap_or_else(|| "none".to_owned()),
    );
}

fn describe_hmac(hmac: &HmacConfig) -> String {
    let algorithm = match hmac.algorithm {
        HmacAlgorithm::Sha1 => "sha1",
        HmacAlgorithm::Sha256 => "sha256",
        HmacAlgorithm::Sha512 => "sha512",
    };
    let encoding = match hmac.encoding {
        SignatureEncoding::Hex => "hex",
        SignatureEncoding::Base64 => "base64",
    };
    let signed = match (hmac.signed_content, &hmac.timestamp_header) {
        (SignedContent::TimestampBody, Some(header)) => {
            format!("{header} + {:?} + body", hmac.separator)
        }
        _ => "body".to_owned(),
    };
    format!(
        "header {}, prefix {:?}, {algorithm}, {encoding}, signs {signed}",
        hmac.header, hmac.prefix
    )
}

fn list_or<T: ToString>(items: &[T], empty: &str) -> String {
    if items.is_empty() {
        return empty.to_owned();
    }
    let texts: Vec<String> = items.iter().map(ToString::to_string).collect();
    texts.join(", ")
}

/// Names a sink's type and destination. URLs are redacted and the signing secret appears by
/// reference.
fn describe_sink(sink: &SinkConfig) -> String {
    let destination = match &sink.kind {
        SinkKind::RedisStream { url, stream, .. } => {
            format!("redis_stream {}, stream {stream:?}", redact_url(url))
        }
        SinkKind::Nats {
            url,
            subject,
            create_stream,
            stream,
            ..
        } => {
            let mut text = format!("nats {}, subject {subject:?}", redact_url(url));
            if let (true, Some(stream)) = (create_stream, stream) {
                let _ = write!(text, ", creates stream {stream:?}");
            }
            text
        }
        SinkKind::Amqp {
            url,
            exchange,
            routing_key,
            ..
        } => format!(
            "amqp {}, exchange {exchange:?}, routing_key {routing_key:?}",
            redact_url(url)
        ),
        SinkKind::Http { url, secret, body } => {
            let body = match body {
                HttpBody::Payload => "payload",
                HttpBody::Envelope => "envelope",
            };
            format!(
                "http POST {}, signed with {secret}, body {body}",
                redact_url(url)
            )
        }
        SinkKind::File { path } => format!("file {}", path.display()),
    };
    format!(
        "{}: {destination}, concurrency {}",
        sink.name, sink.concurrency
    )
}
