//! The HTTP side: `POST /webhooks/{source}` reads the body, verifies the signature, derives the
//! event id and stores the event before it responds.

mod decode;
mod error;
mod extract;
mod handler;
mod memory;
pub mod policy;

pub use decode::{SUPPORTED_ENCODINGS, is_supported as is_supported_encoding};
pub use error::ReceiveError;
pub use extract::{Identity, identify};
pub use memory::BodyMemory;

use crate::config::{ConfigError, SourceConfig};
use crate::store::Store;
use crate::verify::{self, Scheme};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use axum::routing::post;
use ipnet::IpNet;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A configured source, ready to serve.
#[derive(Debug)]
pub struct SourceRuntime {
    pub name: String,
    pub scheme: Box<dyn Scheme>,
    pub body_limit: usize,
    pub id_headers: Vec<HeaderName>,
    pub id_pointers: Vec<String>,
    pub event_type_pointer: Option<String>,
    pub dedupe_window: Duration,
    pub body_hash_window: Duration,
    /// Accepted media types, lowercase; `type/*` and `*/*` are patterns.
    pub content_types: Vec<String>,
    pub content_encodings: Vec<String>,
    /// Client address ranges allowed to post; any address when `None`.
    pub allowed_ips: Option<Vec<IpNet>>,
}

impl SourceRuntime {
    /// Resolves the secrets of `config` and fills in the scheme's defaults.
    pub fn new(config: &SourceConfig) -> Result<Self, ConfigError> {
        let scheme = verify::build(config)?;
        let id_headers = config
            .id_headers
            .iter()
            .map(|name| {
                HeaderName::try_from(name.as_str()).map_err(|_| {
                    ConfigError::Invalid(format!(
                        "source {:?}: invalid header name {name:?} in id_headers",
                        config.name
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let id_pointers = match &config.id_pointers {
            Some(pointers) => pointers.clone(),
            None => scheme
                .default_id_pointers()
                .iter()
                .map(|p| p.to_string())
                .collect(),
        };
        let event_type_pointer = config
            .event_type_pointer
            .clone()
            .or_else(|| scheme.default_event_type_pointer().map(str::to_owned));

        let content_types = match &config.content_types {
            Some(types) => types.clone(),
            None => scheme
                .default_content_types()
                .iter()
                .map(|t| t.to_string())
                .collect(),
        };
        for media in &content_types {
            if media.parse::<mime::Mime>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "source {:?}: invalid media type {media:?} in content_types",
                    config.name
                )));
            }
        }

        Ok(Self {
            name: config.name.clone(),
            scheme,
            body_limit: config.body_limit,
            id_headers,
            id_pointers,
            event_type_pointer,
            dedupe_window: config.dedupe_window,
            body_hash_window: config.body_hash_window,
            content_types: content_types
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
            content_encodings: config.content_encodings.clone(),
            allowed_ips: config.allowed_ips.clone(),
        })
    }
}

/// Shared state of the request handlers.
pub struct ReceiveState {
    pub sources: HashMap<String, SourceRuntime>,
    pub store: Arc<dyn Store>,
    /// Maximum wait for the whole request body. A client that stalls gets a 408.
    pub body_timeout: Duration,
    /// Bytes of request bodies in memory at once, over every request.
    pub body_memory: BodyMemory,
    /// Maximum wait for the store before responding 503.
    pub ack_timeout: Duration,
    pub retry_after_secs: u32,
    /// Proxies whose `X-Forwarded-For` is believed when a source checks client addresses.
    pub trusted_proxies: Vec<IpNet>,
}

/// Builds the router of the receive endpoints.
pub fn router(state: Arc<ReceiveState>) -> Router {
    Router::new()
        .route("/webhooks/{source}", post(handler::receive))
        // Each source applies its own limit while it reads the body.
        .layer(DefaultBodyLimit::disable())
        .fallback(|| async { ReceiveError::UnknownSource })
        .method_not_allowed_fallback(|| async { ReceiveError::MethodNotAllowed })
        .with_state(state)
}
