//! Signing secrets and where they come from.
//!
//! A secret is named in config as `env:NAME` or `file:PATH`, never written into the file itself,
//! so the config can be committed. The bytes live in a [`SecretBytes`], whose `Debug` prints
//! nothing, so no log line or error can leak them.

use secrecy::{ExposeSecret, SecretSlice};
use std::fmt;
use std::path::Path;

/// Key bytes of one signing secret. `Debug` prints `[redacted]`.
#[derive(Clone)]
pub struct SecretBytes(SecretSlice<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(SecretSlice::from(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Error resolving a secret reference to a usable secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret reference {0:?} must start with \"env:\" or \"file:\"; secrets are not written into the config file"
    )]
    UnknownKind(String),
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("environment variable {0} is not valid UTF-8")]
    NonUnicodeEnv(String),
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("secret from {0} is empty")]
    Empty(String),
    #[error(
        "secret from {0} has leading or trailing whitespace; remove it or the signatures will never match"
    )]
    Whitespace(String),
}

/// Resolves a reference such as `env:MAKINI_WEBHOOK_SECRET` or `file:/run/secrets/makini` to
/// the secret text.
///
/// One final line ending in a file is dropped, because `echo secret > file` writes one and the
/// provider never signs with it. Any other leading or trailing whitespace is an error: it is
/// almost always a copy-paste mistake, and a secret that carries it would reject every delivery.
pub fn resolve(reference: &str) -> Result<String, SecretError> {
    let text = if let Some(name) = reference.strip_prefix("env:") {
        match std::env::var(name) {
            Ok(value) => value,
            Err(std::env::VarError::NotPresent) => {
                return Err(SecretError::MissingEnv(name.to_owned()));
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(SecretError::NonUnicodeEnv(name.to_owned()));
            }
        }
    } else if let Some(path) = reference.strip_prefix("file:") {
        read_secret_file(Path::new(path))?
    } else {
        return Err(SecretError::UnknownKind(redact_reference(reference)));
    };

    if text.is_empty() {
        return Err(SecretError::Empty(reference.to_owned()));
    }
    if text.trim() != text {
        return Err(SecretError::Whitespace(reference.to_owned()));
    }
    Ok(text)
}

fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    let mut text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
        path: path.display().to_string(),
        source,
    })?;
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    Ok(text)
}

/// Keeps an invalid reference out of error messages in case it is a pasted secret: only the
/// part before a colon survives.
fn redact_reference(reference: &str) -> String {
    match reference.split_once(':') {
        Some((kind, _)) => format!("{kind}:…"),
        None => "…".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn file_secret_drops_one_line_ending() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"s3cret\n").unwrap();
        let reference = format!("file:{}", file.path().display());
        assert_eq!(resolve(&reference).unwrap(), "s3cret");
    }

    #[test]
    fn file_secret_with_spaces_is_rejected() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b" s3cret\n").unwrap();
        let reference = format!("file:{}", file.path().display());
        assert!(matches!(
            resolve(&reference),
            Err(SecretError::Whitespace(_))
        ));
    }

    #[test]
    fn missing_file_is_rejected() {
        let err = resolve("file:/nonexistent/hookrelay-secret").unwrap_err();
        assert!(matches!(err, SecretError::File { .. }));
    }

    #[test]
    fn missing_env_is_rejected() {
        let err = resolve("env:HOOKRELAY_TEST_SURELY_UNSET_VARIABLE").unwrap_err();
        assert!(matches!(err, SecretError::MissingEnv(_)));
    }

    #[test]
    fn literal_secret_is_rejected_without_echo() {
        let err = resolve("hunter2").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let err = resolve("plain:hunter2").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_prints_no_secret_bytes() {
        let secret = SecretBytes::new(b"hunter2".to_vec());
        assert_eq!(format!("{secret:?}"), "[redacted]");
    }
}
