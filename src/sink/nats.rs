//! NATS JetStream sink: one publish per event to a subject built from a [`Template`], waiting
//! for the stream's acknowledgement.
//!
//! `Nats-Msg-Id` carries the event id, so JetStream drops a re-send that arrives within the
//! stream's duplicate window. `Hookrelay-Source` and `Hookrelay-Event-Type` carry the source
//! and type; the body is the payload as received.
//!
//! Placeholder values are made safe for a subject before they are inserted: every character
//! that is not printable ASCII, and `*` and `>`, becomes `_`, and an empty token becomes `_`.
//! The dots of an event type stay, so `work_orders.inserted` gives subject tokens that a
//! consumer can match with `makini.work_orders.*`.

use super::{
    EVENT_ID_HEADER, EVENT_TYPE_HEADER, SOURCE_HEADER, Sink, SinkError, Template, header_text,
};
use crate::config::SinkKind;
use crate::event::Event;
use async_nats::HeaderValue;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_trait::async_trait;
use std::borrow::Cow;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::OnceCell;

/// Limit of the first connection attempt; later reconnects run in the client's background.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The stream to create on first use.
#[derive(Debug, Clone)]
struct StreamSpec {
    name: String,
    subjects: Vec<String>,
    duplicate_window: Duration,
}

pub struct NatsSink {
    url: String,
    subject: Template,
    create: Option<StreamSpec>,
    /// Set while the stream is known to exist, so it is looked up once, not per event.
    stream_ready: AtomicBool,
    context: OnceCell<jetstream::Context>,
}

impl NatsSink {
    /// Builds the sink from a `nats` sink config.
    pub fn new(kind: &SinkKind) -> Result<Self, String> {
        let SinkKind::Nats {
            url,
            subject,
            create_stream,
            stream,
            stream_subjects,
            duplicate_window,
        } = kind
        else {
            return Err("not a nats sink config".into());
        };

        let template = Template::parse(subject).map_err(|e| format!("subject: {e}"))?;
        let sample = template.render("source", "type.name", subject_token);
        if !is_valid_subject(&sample) {
            return Err(format!(
                "subject {subject:?} gives invalid subjects such as {sample:?}: use dot-separated \
                 tokens without spaces, '*' or '>'"
            ));
        }

        let create = match (create_stream, stream) {
            (false, _) => None,
            (true, None) => return Err("create_stream needs a stream name in `stream`".into()),
            (true, Some(name)) => Some(StreamSpec {
                name: name.clone(),
                subjects: match stream_subjects {
                    Some(subjects) => subjects.clone(),
                    None => vec![derived_stream_subject(&template, subject)?],
                },
                duplicate_window: *duplicate_window,
            }),
        };

        Ok(Self {
            url: url.clone(),
            subject: template,
            create,
            stream_ready: AtomicBool::new(false),
            context: OnceCell::new(),
        })
    }

    /// Returns the JetStream context, connecting on first use. The client reconnects on its
    /// own after that, and publishes made while it is disconnected fail with a timeout.
    async fn context(&self) -> Result<&jetstream::Context, SinkError> {
        self.context
            .get_or_try_init(|| async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(CONNECT_TIMEOUT)
                    .max_reconnects(None)
                    .connect(self.url.as_str())
                    .await
                    .map_err(|e| SinkError::retryable(format!("cannot connect to NATS: {e}")))?;
                Ok(jetstream::new(client))
            })
            .await
    }

    async fn ensure_stream(&self, context: &jetstream::Context) -> Result<(), SinkError> {
        let Some(spec) = &self.create else {
            return Ok(());
        };
        if self.stream_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let config = stream::Config {
            name: spec.name.clone(),
            subjects: spec.subjects.clone(),
            duplicate_window: spec.duplicate_window,
            ..Default::default()
        };
        context.get_or_create_stream(config).await.map_err(|e| {
            SinkError::retryable(format!("cannot create JetStream stream {}: {e}", spec.name))
        })?;
        tracing::info!(stream = %spec.name, "JetStream stream ready");
        self.stream_ready.store(true, Ordering::Release);
        Ok(())
    }

    fn message(event: &Event) -> Result<PublishMessage, SinkError> {
        let value = |text: &str| {
            HeaderValue::from_str(&header_text(text))
                .map_err(|e| SinkError::permanent(format!("invalid NATS header value: {e}")))
        };
        Ok(PublishMessage::build()
            .payload(event.payload.clone())
            .header(
                async_nats::header::NATS_MESSAGE_ID,
                value(&event.delivery_id())?,
            )
            .header(EVENT_ID_HEADER, value(&event.id)?)
            .header(SOURCE_HEADER, value(&event.source)?)
            .header(EVENT_TYPE_HEADER, value(&event.event_type)?))
    }
}

#[async_trait]
impl Sink for NatsSink {
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let context = self.context().await?;
        self.ensure_stream(context).await?;

        let subject = self
            .subject
            .render(&event.source, &event.event_type, subject_token);
        let failed = |e: &dyn std::fmt::Display| {
            SinkError::retryable(format!("NATS publish to {subject}: {e}"))
        };
        let ack = context
            .send_publish(subject.clone(), Self::message(event)?)
            .await
            .map_err(|e| failed(&e))?
            .await;
        match ack {
            Ok(ack) if ack.duplicate => {
                tracing::info!(%subject, stream = %ack.stream, "JetStream dropped a duplicate");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => {
                // The stream may have been deleted since it was checked; look again next time.
                if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound {
                    self.stream_ready.store(false, Ordering::Release);
                }
                Err(failed(&e))
            }
        }
    }
}

/// Makes a placeholder value safe for a subject; see the module documentation.
fn subject_token(value: &str) -> Cow<'_, str> {
    let safe = |c: char| c.is_ascii_graphic() && c != '*' && c != '>';
    let clean = !value.is_empty()
        && value.chars().all(safe)
        && value.split('.').all(|token| !token.is_empty());
    if clean {
        return Cow::Borrowed(value);
    }
    let tokens: Vec<String> = value
        .split('.')
        .map(|token| {
            if token.is_empty() {
                "_".to_owned()
            } else {
                token
                    .chars()
                    .map(|c| if safe(c) { c } else { '_' })
                    .collect()
            }
        })
        .collect();
    Cow::Owned(tokens.join("."))
}

/// Checks the rules of a subject one publishes to: non-empty tokens separated by single dots,
/// no whitespace, no wildcards.
fn is_valid_subject(subject: &str) -> bool {
    subject.split('.').all(|token| {
        !token.is_empty()
            && token
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '*' && c != '>')
    })
}

/// Returns the stream subject covering every subject of `template`: its literal tokens before
/// the first placeholder followed by `>`.
fn derived_stream_subject(template: &Template, text: &str) -> Result<String, String> {
    let prefix = template.literal_prefix();
    match prefix.rfind('.') {
        Some(end) if end > 0 => Ok(format!("{}.>", &prefix[..end])),
        _ if !text.contains('{') => Ok(text.to_owned()),
        _ => Err(format!(
            "cannot derive the stream's subjects from {text:?}; set stream_subjects"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(template: &str, source: &str, event_type: &str) -> String {
        Template::parse(template)
            .unwrap()
            .render(source, event_type, subject_token)
    }

    #[test]
    fn event_dots_stay_separators() {
        assert_eq!(
            subject("makini.{event}", "makini", "work_orders.inserted"),
            "makini.work_orders.inserted"
        );
    }

    #[test]
    fn unsafe_event_type_cannot_break_subject() {
        let cases = [
            ("a b", "makini.a_b"),
            ("orders.*", "makini.orders._"),
            (">", "makini._"),
            ("", "makini._"),
            ("..x.", "makini._._.x._"),
            ("tab\there\r\n", "makini.tab_here__"),
            ("größe", "makini.gr__e"),
        ];
        for (event_type, expected) in cases {
            let rendered = subject("makini.{event}", "makini", event_type);
            assert_eq!(rendered, expected, "event type {event_type:?}");
            assert!(is_valid_subject(&rendered), "{rendered:?}");
        }
    }

    #[test]
    fn wildcard_in_template_is_rejected() {
        let kind = |subject: &str| SinkKind::Nats {
            url: "nats://127.0.0.1:4222".into(),
            subject: subject.into(),
            create_stream: false,
            stream: None,
            stream_subjects: None,
            duplicate_window: Duration::from_secs(60),
        };
        assert!(NatsSink::new(&kind("makini.*")).is_err());
        assert!(NatsSink::new(&kind("makini..{event}")).is_err());
        assert!(NatsSink::new(&kind("makini.{event}")).is_ok());
    }

    #[test]
    fn stream_subject_is_derived_from_prefix() {
        let derive = |text: &str| derived_stream_subject(&Template::parse(text).unwrap(), text);
        assert_eq!(derive("makini.{event}").unwrap(), "makini.>");
        assert_eq!(derive("hooks.in.{source}.{event}").unwrap(), "hooks.in.>");
        assert_eq!(derive("events").unwrap(), "events");
        assert!(derive("{source}.{event}").is_err());
    }

    #[test]
    fn create_stream_needs_a_name() {
        let kind = SinkKind::Nats {
            url: "nats://127.0.0.1:4222".into(),
            subject: "makini.{event}".into(),
            create_stream: true,
            stream: None,
            stream_subjects: None,
            duplicate_window: Duration::from_secs(60),
        };
        let err = NatsSink::new(&kind).err().unwrap();
        assert!(err.contains("stream"), "{err}");
    }
}
