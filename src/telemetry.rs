//! Log output: `tracing` events to stderr, filtered by `RUST_LOG` (default `info`).
//! `HOOKRELAY_LOG_FORMAT=json` writes one JSON object per line, for log collectors; the default
//! is human-readable text, coloured when stderr is a terminal.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// Reads `HOOKRELAY_LOG_FORMAT`; anything but `json` means text.
    pub fn from_env() -> Self {
        match std::env::var("HOOKRELAY_LOG_FORMAT").as_deref() {
            Ok("json") => Self::Json,
            _ => Self::Text,
        }
    }
}

/// Installs the global subscriber. Calling it again does nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match LogFormat::from_env() {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}
