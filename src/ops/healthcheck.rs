//! `hookrelay healthcheck`: a client for the container's `HEALTHCHECK`, because the runtime
//! image has no curl or wget.

use std::time::Duration;

/// Sends `GET url` and returns the response status, or why no response arrived in time.
/// Redirects are not followed, so a 3xx counts as unhealthy.
pub async fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url} failed: {}", with_causes(&e)))?;
    Ok(response.status().as_u16())
}

/// Joins an error's message with those of its sources, because reqwest's own message leaves
/// out the reason, such as "Connection refused".
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
