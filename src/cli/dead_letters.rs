//! `hookrelay dlq list`, `hookrelay dlq show` and `hookrelay replay`: the dead-letter queue
//! seen and emptied from the command line, through the store the config names.

use super::fail;
use crate::app;
use crate::config::Config;
use crate::event::loggable;
use crate::store::{DeadLetterRecord, ReplaySelection, Store};
use base64::Engine;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Maximum characters of an error message in `dlq list`; `dlq show` prints it whole.
const LIST_ERROR_CHARS: usize = 60;

/// Loads the config and opens its store. The embedded store fails to open while `serve` has
/// it open, so the error message then asks the user to stop `serve`.
async fn open(path: Option<&Path>) -> Result<(Config, Arc<dyn Store>), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    match app::open_store(&config).await {
        Ok(store) => Ok((config, store)),
        Err(error) if config.store.redis_url.is_none() => Err(format!(
            "{error}\nstop `hookrelay serve` before running dlq or replay: the embedded store \
             allows one process at a time"
        )),
        Err(error) => Err(error.to_string()),
    }
}

/// Prints up to `limit` dead letters, oldest first, one per line.
pub(super) async fn list(config: Option<&Path>, limit: usize) -> ExitCode {
    let (_, store) = match open(config).await {
        Ok(opened) => opened,
        Err(message) => return fail(&message),
    };
    let (records, stats) = match tokio::try_join!(store.dead_letters(limit), store.stats()) {
        Ok(found) => found,
        Err(error) => return fail(&error.to_string()),
    };

    let rows: Vec<[String; 8]> = records.iter().map(list_row).collect();
    let header = [
        "HANDLE", "EVENT ID", "SOURCE", "TYPE", "SINK", "ATTEMPTS", "RECEIVED", "ERROR",
    ]
    .map(str::to_owned);
    let mut widths = header.clone().map(|title| title.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    println!(
        "{} of {} dead letters shown",
        records.len(),
        stats.dead_letters
    );
    ExitCode::SUCCESS
}

/// Builds the cells of one `dlq list` line, with the provider's text escaped so that it
/// cannot move the cursor or forge lines.
fn list_row(record: &DeadLetterRecord) -> [String; 8] {
    let event = &record.event;
    let mut error: String = loggable(&record.error)
        .chars()
        .take(LIST_ERROR_CHARS)
        .collect();
    if record.error.chars().count() > LIST_ERROR_CHARS {
        error.push('…');
    }
    [
        record.handle.clone(),
        loggable(&event.id),
        loggable(&event.source),
        loggable(&event.event_type),
        loggable(&record.sink),
        record.attempt.to_string(),
        received_time(event.received_at_ms),
        error,
    ]
}

/// Prints one dead letter with its payload.
pub(super) async fn show(config: Option<&Path>, handle: &str) -> ExitCode {
    let (_, store) = match open(config).await {
        Ok(opened) => opened,
        Err(message) => return fail(&message),
    };
    let record = match store.dead_letter(handle).await {
        Ok(Some(record)) => record,
        Ok(None) => return fail(&format!("no dead letter with handle {}", loggable(handle))),
        Err(error) => return fail(&error.to_string()),
    };

    let event = &record.event;
    println!("handle:    {}", record.handle);
    println!("event id:  {}", loggable(&event.id));
    println!("source:    {}", loggable(&event.source));
    println!("type:      {}", loggable(&event.event_type));
    println!("sink:      {}", loggable(&record.sink));
    println!("attempts:  {}", record.attempt);
    println!("received:  {}", received_time(event.received_at_ms));
    println!("error:     {}", record.error.escape_debug());
    let (encoding, payload) = printable_payload(&event.payload);
    println!("payload:   {} bytes, {encoding}", event.payload.len());
    println!("{payload}");
    ExitCode::SUCCESS
}

/// Returns the payload as text when it is UTF-8 without control characters other than tab
/// and line breaks, else as base64, so that printing it can never send terminal escapes.
fn printable_payload(payload: &[u8]) -> (&'static str, String) {
    let text = std::str::from_utf8(payload).ok().filter(|text| {
        !text
            .chars()
            .any(|c| c.is_control() && !"\t\n\r".contains(c))
    });
    match text {
        Some(text) => ("text", text.to_owned()),
        None => (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(payload),
        ),
    }
}

fn received_time(received_at_ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(received_at_ms);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Moves the selected dead letters back to the inbox and prints each one moved.
pub(super) async fn replay(config: Option<&Path>, selection: ReplaySelection) -> ExitCode {
    let (config, store) = match open(config).await {
        Ok(opened) => opened,
        Err(message) => return fail(&message),
    };
    if let Some(sink) = &selection.sink
        && !config
            .sinks
            .iter()
            .any(|configured| &configured.name == sink)
    {
        let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        return fail(&format!(
            "sink {} is not in the config; configured sinks: {}",
            loggable(sink),
            names.join(", ")
        ));
    }

    let replayed = match store.replay(&selection).await {
        Ok(replayed) => replayed,
        Err(error) => return fail(&error.to_string()),
    };
    for record in &replayed {
        println!(
            "dead letter {} (event {}) is inbox entry {} for sink {}",
            record.dead_letter,
            loggable(&record.event_id),
            record.inbox,
            loggable(&record.sink)
        );
    }

    if let (Some(handle), true) = (&selection.handle, replayed.is_empty()) {
        let of_sink = selection
            .sink
            .as_deref()
            .map(|sink| format!(" for sink {}", loggable(sink)))
            .unwrap_or_default();
        return fail(&format!(
            "no dead letter with handle {}{of_sink}",
            loggable(handle)
        ));
    }
    println!(
        "{} dead letters returned to the inbox; the worker of `hookrelay serve` delivers them",
        replayed.len()
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::printable_payload;

    #[test]
    fn json_payload_prints_as_text() {
        let (encoding, shown) = printable_payload(b"{\"a\":\n\"b\"}");
        assert_eq!(encoding, "text");
        assert_eq!(shown, "{\"a\":\n\"b\"}");
    }

    #[test]
    fn binary_payload_prints_as_base64() {
        let (encoding, shown) = printable_payload(b"\xff\x00");
        assert_eq!(encoding, "base64");
        assert_eq!(shown, "/wA=");
    }

    #[test]
    fn terminal_escape_prints_as_base64() {
        let (encoding, _) = printable_payload(b"\x1b[2Jclear");
        assert_eq!(encoding, "base64");
    }
}
