//! Command-line interface.

use crate::config::{Config, SchemeKind};
use crate::send::{self, Encoding, SendRequest};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "hookrelay",
    version,
    about = "Webhook receiver: verify, deduplicate, store, forward"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive webhooks and forward them to the configured sinks.
    Serve {
        /// TOML config file; `HOOKRELAY_*` environment variables override its keys.
        #[arg(long, short, env = "HOOKRELAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Sign an event as a provider would, post it, and print the response.
    Send {
        /// Receiver URL; `/webhooks/<source>` is appended when it has no path.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Source name, used in the URL path.
        #[arg(long, default_value = "makini")]
        source: String,
        /// Signature scheme; by default the one named like the source, else makini.
        #[arg(long, value_parser = parse_scheme)]
        scheme: Option<SchemeKind>,
        /// Environment variable that contains the signing secret.
        #[arg(long)]
        secret_env: String,
        /// Event type of the sample body.
        #[arg(long, default_value = "assets.updated")]
        event: String,
        /// File with the body to send instead of a sample.
        #[arg(long)]
        body: Option<PathBuf>,
        /// Encoding of a Makini signature.
        #[arg(long, value_enum, default_value = "hex")]
        encoding: Encoding,
        /// Message id of a Standard Webhooks delivery; a fresh one by default. Send the same
        /// id twice to see the duplicate response.
        #[arg(long)]
        id: Option<String>,
    },
}

fn parse_scheme(text: &str) -> Result<SchemeKind, String> {
    match text {
        "makini" => Ok(SchemeKind::Makini),
        "standard" => Ok(SchemeKind::Standard),
        other => Err(format!(
            "unknown scheme {other:?}; expected makini or standard"
        )),
    }
}

/// Runs the command line and returns the process exit code.
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            crate::telemetry::init();
            let config = match Config::load(config.as_deref()) {
                Ok(config) => config,
                Err(error) => return fail(&error.to_string()),
            };
            match crate::app::serve(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error.to_string()),
            }
        }
        Command::Send {
            url,
            source,
            scheme,
            secret_env,
            event,
            body,
            encoding,
            id,
        } => {
            let secret = match std::env::var(&secret_env) {
                Ok(secret) if !secret.is_empty() => secret,
                _ => return fail(&format!("environment variable {secret_env} is not set")),
            };
            let body = match body {
                Some(path) => match std::fs::read(&path) {
                    Ok(bytes) => bytes,
                    Err(e) => return fail(&format!("cannot read {}: {e}", path.display())),
                },
                None => send::sample_makini_body(&event),
            };
            let scheme = scheme
                .or_else(|| parse_scheme(&source).ok())
                .unwrap_or(SchemeKind::Makini);
            let request = SendRequest {
                url: send::endpoint(&url, &source),
                scheme,
                secret,
                body,
                encoding,
                message_id: id.unwrap_or_else(|| format!("msg_{}", uuid::Uuid::new_v4().simple())),
            };
            match send::send(&request).await {
                Ok((status, body)) => {
                    println!("POST {} -> {status}", request.url);
                    println!("{body}");
                    if (200..300).contains(&status) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => fail(&error),
            }
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
