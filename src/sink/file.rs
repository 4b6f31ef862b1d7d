//! File sink: appends each event as one line of JSON (the envelope of the HTTP sink) to a
//! local file and syncs it to disk before the delivery counts. It is meant for trying hookrelay
//! on a laptop and for tests. A process that dies between the write and the settle writes the
//! line again, so a reader deduplicates on `delivery_id`.

use super::{Sink, SinkError, envelope};
use crate::event::Event;
use async_trait::async_trait;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub struct FileSink {
    path: PathBuf,
    /// Serialises appends, so lines of concurrent deliveries never interleave.
    lock: Arc<Mutex<()>>,
}

impl FileSink {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Arc::new(Mutex::new(())),
        }
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let mut line = envelope(event);
        line.push(b'\n');
        let path = self.path.clone();
        let lock = self.lock.clone();

        // File writes and fsync block, so they run off the async threads.
        tokio::task::spawn_blocking(move || {
            let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(&line)?;
            file.sync_data()
        })
        .await
        .map_err(|e| SinkError::retryable(format!("file sink task failed: {e}")))?
        .map_err(|e| SinkError::retryable(format!("cannot append to {}: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn appends_one_json_line_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events/out.jsonl");
        let sink = FileSink::new(path.clone());
        for id in ["a", "b"] {
            let event = Event {
                id: id.into(),
                source: "makini".into(),
                event_type: "assets.updated".into(),
                received_at_ms: 1,
                payload: Bytes::from_static(br#"{"event":"assets.updated"}"#),
            };
            sink.deliver(&event).await.unwrap();
        }

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["id"], "a");
        assert_eq!(lines[1]["id"], "b");
        assert_eq!(lines[0]["payload"]["event"], "assets.updated");
    }
}
