//! The operator commands run as the binary: `check-config` validates a config as `serve` does
//! and prints no secret, and `healthcheck` exits 0 only on a 2xx response.

mod common;

use common::{SECRET, ServiceSpec, TestService, free_port, secret_file};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use tempfile::NamedTempFile;

/// Values that must never appear in the output of `check-config`.
const ENV_SECRET: &str = "mk-env-secret-Quokka-4417";
const FILE_SECRET: &str = "mk-file-secret-Wombat-9023";
const SINK_SECRET: &str = "whsec_c2luay1zZWNyZXQtTnVtYmF0LTc3MzE=";
const REDIS_PASSWORD: &str = "redis-pass-Bilby-5512";
const AMQP_PASSWORD: &str = "amqp-pass-Dingo-3381";
const URL_TOKEN: &str = "url-token-Possum-2264";

fn write_config(text: &str) -> NamedTempFile {
    let mut file = NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

/// Returns a config with every kind of sink, and secrets from the environment and a file.
fn full_config(secret_path: &Path) -> String {
    format!(
        r#"
listen = "0.0.0.0:9090"

[store]
redis_url = "redis://default:{REDIS_PASSWORD}@127.0.0.1:6379/0"
key_prefix = "check"

[[sources]]
name = "makini"
scheme = "makini"
secrets = ["env:CHECK_CONFIG_MAKINI_SECRET", "file:{secret}"]

[[sources]]
name = "partner"
scheme = "hmac"
secrets = ["env:CHECK_CONFIG_MAKINI_SECRET"]
allowed_ips = ["10.0.0.0/8"]
[sources.hmac]
header = "X-Partner-Signature"
prefix = "sha256="

[[sinks]]
name = "events"
type = "redis_stream"
url = "redis://default:{REDIS_PASSWORD}@127.0.0.1:6379"
stream = "makini.events"

[[sinks]]
name = "bus"
type = "nats"
url = "nats://127.0.0.1:4222"
subject = "makini.{{event}}"

[[sinks]]
name = "rabbit"
type = "amqp"
url = "amqp://guest:{AMQP_PASSWORD}@127.0.0.1:5672/%2f"
exchange = "hooks"
routing_key = "{{source}}.{{event}}"

[[sinks]]
name = "downstream"
type = "http"
url = "http://127.0.0.1:9000/hooks?token={URL_TOKEN}"
secret = "env:CHECK_CONFIG_SINK_SECRET"

[[routes]]
source = "makini"
events = ["work_orders.*"]
sinks = ["events", "bus", "rabbit", "downstream"]

[[routes]]
source = "partner"
sinks = ["events"]
"#,
        secret = secret_path.display()
    )
}

/// Runs `hookrelay check-config FILE` with the secrets of [`full_config`] set, unless
/// `unset` names one of them.
fn check_config(config: &Path, unset: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hookrelay"));
    command
        .arg("check-config")
        .arg(config)
        .env("CHECK_CONFIG_MAKINI_SECRET", ENV_SECRET)
        .env("CHECK_CONFIG_SINK_SECRET", SINK_SECRET)
        .env_remove("HOOKRELAY_LISTEN")
        .env_remove("HOOKRELAY_REDIS_URL")
        .env_remove("HOOKRELAY_DATA_DIR")
        .env_remove("HOOKRELAY_ACK_TIMEOUT");
    if let Some(name) = unset {
        command.env_remove(name);
    }
    command.output().expect("hookrelay binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_describes_valid_config() {
    let secret = secret_file(FILE_SECRET);
    let config = write_config(&full_config(secret.path()));
    let output = check_config(config.path(), None);
    let stdout = text(&output.stdout);

    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(stdout.contains("is valid"), "{stdout}");
    assert!(stdout.contains("listen: 0.0.0.0:9090"), "{stdout}");
    assert!(
        stdout.contains("store: redis redis://***@127.0.0.1:6379/0, key prefix \"check\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("makini: scheme makini, POST /webhooks/makini"),
        "{stdout}"
    );
    let file_reference = format!("file:{}", secret.path().display());
    assert!(
        stdout.contains(&format!(
            "secrets (2): env:CHECK_CONFIG_MAKINI_SECRET, {file_reference}"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("partner: scheme hmac"), "{stdout}");
    assert!(stdout.contains("allowed_ips: 10.0.0.0/8"), "{stdout}");
    assert!(
        stdout.contains("header X-Partner-Signature, prefix \"sha256=\", sha256, hex"),
        "{stdout}"
    );
    assert!(stdout.contains("tolerance: 5m"), "{stdout}");
    assert!(
        stdout.contains("makini [work_orders.*] -> events, bus, rabbit, downstream"),
        "{stdout}"
    );
    assert!(
        stdout.contains("events: redis_stream redis://***@127.0.0.1:6379, stream"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rabbit: amqp amqp://***@127.0.0.1:5672/%2f, exchange \"hooks\""),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "downstream: http POST http://127.0.0.1:9000/hooks?***, \
             signed with env:CHECK_CONFIG_SINK_SECRET"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("warnings"), "{stdout}");
}

#[test]
fn check_config_prints_no_secret() {
    let secret = secret_file(FILE_SECRET);
    let config = write_config(&full_config(secret.path()));
    let output = check_config(config.path(), None);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));

    let printed = format!("{}{}", text(&output.stdout), text(&output.stderr));
    for secret in [
        ENV_SECRET,
        FILE_SECRET,
        SINK_SECRET,
        REDIS_PASSWORD,
        AMQP_PASSWORD,
        URL_TOKEN,
    ] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
}

#[test]
fn check_config_reports_missing_env_var() {
    let secret = secret_file(FILE_SECRET);
    let config = write_config(&full_config(secret.path()));
    let output = check_config(config.path(), Some("CHECK_CONFIG_MAKINI_SECRET"));
    let stderr = text(&output.stderr);

    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
    assert!(
        stderr.contains("environment variable CHECK_CONFIG_MAKINI_SECRET is not set"),
        "{stderr}"
    );
    assert!(stderr.contains("\"makini\""), "{stderr}");
}

#[test]
fn check_config_reports_missing_sink_secret() {
    let secret = secret_file(FILE_SECRET);
    let config = write_config(&full_config(secret.path()));
    let output = check_config(config.path(), Some("CHECK_CONFIG_SINK_SECRET"));
    let stderr = text(&output.stderr);

    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("sink \"downstream\""), "{stderr}");
    assert!(stderr.contains("CHECK_CONFIG_SINK_SECRET"), "{stderr}");
}

#[test]
fn check_config_reports_typo() {
    let secret = secret_file(FILE_SECRET);
    let config_text = full_config(secret.path()).replace("key_prefix =", "key_prefx =");
    let config = write_config(&config_text);
    let output = check_config(config.path(), None);
    let stderr = text(&output.stderr);

    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
    assert!(stderr.contains("key_prefx"), "{stderr}");
    assert!(stderr.contains("line 6"), "{stderr}");
}

#[test]
fn check_config_reports_missing_file() {
    let output = check_config(Path::new("/nonexistent/hookrelay.toml"), None);
    let stderr = text(&output.stderr);

    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read config file /nonexistent/hookrelay.toml"),
        "{stderr}"
    );
}

#[test]
fn check_config_describes_embedded_store() {
    let config = write_config(
        "[store]\ndata_dir = \"/var/lib/hookrelay\"\n\
         [[sources]]\nname = \"local\"\nscheme = \"none\"\n",
    );
    let output = check_config(config.path(), None);
    let stdout = text(&output.stdout);

    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        stdout.contains("store: embedded, data dir /var/lib/hookrelay"),
        "{stdout}"
    );
    assert!(
        stdout.contains("secrets (0): none (scheme none verifies no signature)"),
        "{stdout}"
    );
    assert!(stdout.contains("no route for source \"local\""), "{stdout}");
    assert!(
        !Path::new("/var/lib/hookrelay").exists(),
        "check-config must not create the data directory"
    );
}

fn healthcheck(url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["healthcheck", "--timeout", "2s", "--url", url])
        .output()
        .expect("hookrelay binary runs")
}

#[tokio::test]
async fn healthcheck_follows_the_status() {
    let secret = secret_file(SECRET);
    let service = TestService::start(ServiceSpec::new("healthcheck", &secret)).await;

    let base = service.base.clone();
    let healthy = tokio::task::spawn_blocking(move || healthcheck(&format!("{base}/healthz")))
        .await
        .unwrap();
    assert_eq!(healthy.status.code(), Some(0), "{}", text(&healthy.stderr));

    let base = service.base.clone();
    let missing = tokio::task::spawn_blocking(move || healthcheck(&format!("{base}/nowhere")))
        .await
        .unwrap();
    let stderr = text(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("returned 404"), "{stderr}");

    service.stop().await;
}

#[test]
fn healthcheck_fails_without_server() {
    let url = format!("http://127.0.0.1:{}/healthz", free_port());
    let output = healthcheck(&url);
    let stderr = text(&output.stderr);

    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("failed"), "{stderr}");
    assert!(stderr.to_lowercase().contains("refused"), "{stderr}");
}

/// Returns the TOML under `hookrelay.toml: |` in the ConfigMap, without its YAML indentation.
fn configmap_config(manifest: &str) -> String {
    let lines = manifest
        .lines()
        .skip_while(|line| line.trim() != "hookrelay.toml: |")
        .skip(1)
        .take_while(|line| line.is_empty() || line.starts_with("    "));
    let mut config = String::new();
    for line in lines {
        config.push_str(line.strip_prefix("    ").unwrap_or(line));
        config.push('\n');
    }
    config
}

#[test]
fn shipped_configs_pass_check_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("deploy/kubernetes/configmap.yaml")).unwrap();
    let configmap = write_config(&configmap_config(&manifest));
    let configs = [
        root.join("deploy/hookrelay.toml"),
        root.join("deploy/hookrelay.compose.toml"),
        configmap.path().to_owned(),
    ];

    for config in &configs {
        let output = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .arg("check-config")
            .arg(config)
            .env("MAKINI_WEBHOOK_SECRET", "placeholder-secret")
            .env("HOOKRELAY_REDIS_URL", "redis://redis:6379")
            .env_remove("HOOKRELAY_LISTEN")
            .output()
            .expect("hookrelay binary runs");
        let stdout = text(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            config.display(),
            text(&output.stderr)
        );
        assert!(
            stdout.contains("makini: scheme makini"),
            "{}: {stdout}",
            config.display()
        );
        assert!(
            stdout.contains("makini [*] -> events"),
            "{}: {stdout}",
            config.display()
        );
    }
}
