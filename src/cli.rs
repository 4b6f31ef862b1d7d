//! Command-line interface.

mod dead_letters;

use crate::config::{
    Config, HmacAlgorithm, HmacConfig, SchemeKind, SignatureEncoding, SignedContent,
};
use crate::send::{self, Encoding, SendRequest};
use crate::store::ReplaySelection;
use clap::{ArgGroup, Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

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
    /// Validate a config as `serve` would, secrets included, and print what it would serve.
    /// Secrets are shown by reference only and URLs without credentials.
    CheckConfig {
        /// TOML config file; `HOOKRELAY_*` environment variables override its keys.
        file: PathBuf,
    },
    /// Exit 0 when a GET of the URL returns a 2xx status, 1 otherwise; for container health
    /// checks.
    Healthcheck {
        /// URL to probe.
        #[arg(
            long,
            env = "HOOKRELAY_HEALTHCHECK_URL",
            default_value = "http://127.0.0.1:8080/healthz"
        )]
        url: String,
        /// Maximum wait for the response, such as `2s` or `500ms`.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Sign an event as a provider would, post it, and print the response.
    Send(Box<SendArgs>),
    /// Inspect the dead-letter queue. With the embedded store, stop `hookrelay serve` first:
    /// the store allows one process at a time.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Return dead letters to the inbox for another round, each owed only to the sink that
    /// gave up on it. With the embedded store, stop `hookrelay serve` first: the store allows
    /// one process at a time.
    Replay(ReplayArgs),
}

/// The config file option of the dead-letter commands, which read the store `serve` uses.
#[derive(Debug, Args)]
struct ConfigArg {
    /// TOML config file of `hookrelay serve`; `HOOKRELAY_*` environment variables override its
    /// keys.
    #[arg(long, short, env = "HOOKRELAY_CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> Option<&Path> {
        self.config.as_deref()
    }
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first: handle, event id, source, type, sink, attempts,
    /// received time and error.
    List {
        /// Maximum number of dead letters listed.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print one dead letter with its payload: as text when it is printable UTF-8, else
    /// base64.
    Show {
        /// Handle of the dead letter, as `dlq list` prints it.
        handle: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Options of `hookrelay replay`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("selection").required(true).args(["handle", "all"])))]
struct ReplayArgs {
    /// Handle of the dead letter to replay, as `dlq list` prints it.
    handle: Option<String>,
    /// Replay every dead letter.
    #[arg(long)]
    all: bool,
    /// Replay only the dead letters of this sink.
    #[arg(long)]
    sink: Option<String>,
    #[command(flatten)]
    config: ConfigArg,
}

/// Options of `hookrelay send`.
#[derive(Debug, Args)]
struct SendArgs {
    /// Receiver URL; `/webhooks/<source>` is appended when it has no path.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Source name, used in the URL path.
    #[arg(long, default_value = "makini")]
    source: String,
    /// Signature scheme (makini, standard, github, stripe, shopify, slack, twilio, hmac,
    /// none); by default the one named like the source, else makini.
    #[arg(long, value_parser = parse_scheme)]
    scheme: Option<SchemeKind>,
    /// Environment variable that contains the signing secret; not needed with `--scheme none`.
    #[arg(long)]
    secret_env: Option<String>,
    /// Event type: in the sample body, or in `X-GitHub-Event` / `X-Shopify-Topic`.
    #[arg(long, default_value = "assets.updated")]
    event: String,
    /// File with the body to send instead of a sample.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Content-Type of the body; JSON by default, a form for twilio.
    #[arg(long)]
    content_type: Option<String>,
    /// Encoding of a Makini or hmac signature.
    #[arg(long, value_enum, default_value = "hex")]
    encoding: Encoding,
    /// Delivery id: `webhook-id` (standard), `X-GitHub-Delivery` (github),
    /// `X-Shopify-Webhook-Id` (shopify); a fresh one by default. Send the same id twice to see
    /// the duplicate response.
    #[arg(long)]
    id: Option<String>,
    /// URL Twilio would sign, when it differs from the one posted to (a tunnel or proxy).
    #[arg(long)]
    public_url: Option<String>,
    /// hmac: header that carries the signature.
    #[arg(long)]
    hmac_header: Option<String>,
    /// hmac: text before the signature, such as `sha256=`.
    #[arg(long, default_value = "")]
    hmac_prefix: String,
    /// hmac: hash function: sha1, sha256 or sha512.
    #[arg(long, default_value = "sha256", value_parser = parse_algorithm)]
    hmac_algorithm: HmacAlgorithm,
    /// hmac: header with the signed Unix timestamp; the body alone is signed without it.
    #[arg(long)]
    hmac_timestamp_header: Option<String>,
    /// hmac: bytes between the timestamp and the body.
    #[arg(long, default_value = ".")]
    hmac_separator: String,
}

fn parse_scheme(text: &str) -> Result<SchemeKind, String> {
    text.parse()
}

fn parse_algorithm(text: &str) -> Result<HmacAlgorithm, String> {
    match text.to_ascii_lowercase().replace('-', "").as_str() {
        "sha1" => Ok(HmacAlgorithm::Sha1),
        "sha256" => Ok(HmacAlgorithm::Sha256),
        "sha512" => Ok(HmacAlgorithm::Sha512),
        _ => Err(format!(
            "unknown algorithm {text:?}; expected sha1, sha256 or sha512"
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
        Command::CheckConfig { file } => match crate::check::check_config(&file) {
            Ok(description) => {
                print!("{description}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error.to_string()),
        },
        Command::Healthcheck { url, timeout } => {
            match crate::ops::healthcheck::probe(&url, timeout).await {
                Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
                Ok(status) => fail(&format!("GET {url} returned {status}")),
                Err(error) => fail(&error),
            }
        }
        Command::Send(args) => run_send(*args).await,
        Command::Dlq {
            command: DlqCommand::List { limit, config },
        } => dead_letters::list(config.path(), limit as usize).await,
        Command::Dlq {
            command: DlqCommand::Show { handle, config },
        } => dead_letters::show(config.path(), &handle).await,
        Command::Replay(args) => {
            let selection = ReplaySelection {
                handle: args.handle,
                sink: args.sink,
            };
            dead_letters::replay(args.config.path(), selection).await
        }
    }
}

async fn run_send(args: SendArgs) -> ExitCode {
    let scheme = args
        .scheme
        .or_else(|| parse_scheme(&args.source).ok())
        .unwrap_or(SchemeKind::Makini);
    let secret = match (&args.secret_env, scheme) {
        (None, SchemeKind::None) => String::new(),
        (None, _) => return fail("--secret-env is required for every scheme but none"),
        (Some(name), _) => match std::env::var(name) {
            Ok(secret) if !secret.is_empty() => secret,
            _ => return fail(&format!("environment variable {name} is not set")),
        },
    };
    let body = match &args.body {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => return fail(&format!("cannot read {}: {e}", path.display())),
        },
        None => send::sample_body(scheme, &args.event),
    };

    let mut request = SendRequest::new(
        send::endpoint(&args.url, &args.source),
        scheme,
        secret,
        body,
    );
    request.encoding = args.encoding;
    request.event_type = args.event;
    request.public_url = args.public_url;
    if let Some(content_type) = args.content_type {
        request.content_type = content_type;
    }
    if let Some(id) = args.id {
        request.message_id = id;
    }
    if let Some(header) = args.hmac_header {
        request.hmac = Some(HmacConfig {
            header,
            prefix: args.hmac_prefix,
            algorithm: args.hmac_algorithm,
            encoding: match args.encoding {
                Encoding::Hex => SignatureEncoding::Hex,
                Encoding::Base64 => SignatureEncoding::Base64,
            },
            signed_content: match args.hmac_timestamp_header {
                Some(_) => SignedContent::TimestampBody,
                None => SignedContent::Body,
            },
            timestamp_header: args.hmac_timestamp_header,
            separator: args.hmac_separator,
        });
    }

    match send::send(&request).await {
        Ok((status, body)) => {
            println!("POST {} -> {status}", send::request_url(&request));
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

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
