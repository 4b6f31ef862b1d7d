//! RabbitMQ (AMQP 0-9-1) sink: one `basic.publish` per event to an exchange, with a routing
//! key built from a [`Template`], waiting for the broker's publisher confirm.
//!
//! Each message is persistent (delivery mode 2) and its body is the payload as received. It
//! carries the event id as `message_id`, the event type as `type`, the receipt time as
//! `timestamp` (seconds), and the headers `Hookrelay-Source` and `Hookrelay-Event-Type`.
//! RabbitMQ itself does not drop a re-sent `message_id`, so consumers that must see an event
//! once deduplicate on it.
//!
//! The connection is opened on first use and opened again on the next delivery after the
//! broker closed it or it failed, so a broker restart costs one failed round per event.

use super::{EVENT_TYPE_HEADER, SOURCE_HEADER, Sink, SinkError, Template, header_text};
use crate::event::Event;
use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::time::Duration;
use tokio::sync::Mutex;

/// Limit of one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// AMQP delivery mode of a message the broker writes to disk.
const PERSISTENT: u8 = 2;

/// AMQP short strings, such as routing keys and `message_id`, hold at most 255 bytes.
const SHORT_STRING_MAX: usize = 255;

/// An open connection and the confirm-mode channel all publishes share.
struct Link {
    // Dropping the connection would close the channel, so it is kept with it.
    _connection: Connection,
    channel: Channel,
}

pub struct AmqpSink {
    url: String,
    /// Shown by the broker (`rabbitmqctl list_connections client_properties`) to tell this
    /// sink's connection apart.
    connection_name: String,
    exchange: ShortString,
    routing_key: Template,
    mandatory: bool,
    link: Mutex<Option<Link>>,
}

impl AmqpSink {
    /// Builds the sink; `name` is the sink's name in the config, used in the connection name.
    pub fn new(
        name: &str,
        url: &str,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> Result<Self, String> {
        url.parse::<lapin::uri::AMQPUri>()
            .map_err(|e| format!("invalid AMQP URL: {e}"))?;
        let exchange = ShortString::try_new(exchange)
            .map_err(|_| format!("exchange name is longer than {SHORT_STRING_MAX} bytes"))?;
        let routing_key = Template::parse(routing_key).map_err(|e| format!("routing_key: {e}"))?;
        Ok(Self {
            url: url.to_owned(),
            connection_name: format!("hookrelay sink {name}"),
            exchange,
            routing_key,
            mandatory,
            link: Mutex::new(None),
        })
    }

    /// Returns the shared channel, connecting first when there is none or it has closed.
    async fn channel(&self) -> Result<Channel, SinkError> {
        let mut link = self.link.lock().await;
        if let Some(open) = link.as_ref() {
            if open.channel.status().connected() {
                return Ok(open.channel.clone());
            }
            tracing::warn!(exchange = %self.exchange, "AMQP channel closed; reconnecting");
            *link = None;
        }

        let open = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| {
                SinkError::retryable(format!(
                    "connecting to the AMQP broker timed out after {}",
                    humantime::format_duration(CONNECT_TIMEOUT)
                ))
            })??;
        let channel = open.channel.clone();
        *link = Some(open);
        Ok(channel)
    }

    async fn connect(&self) -> Result<Link, SinkError> {
        let failed = |e: lapin::Error| {
            SinkError::retryable(format!("cannot connect to the AMQP broker: {e}"))
        };
        let properties = ConnectionProperties::default()
            .with_connection_name(self.connection_name.as_str().into());
        let connection = Connection::connect(&self.url, properties)
            .await
            .map_err(failed)?;
        let channel = connection.create_channel().await.map_err(failed)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(failed)?;
        tracing::info!(exchange = %self.exchange, "AMQP connection open");
        Ok(Link {
            _connection: connection,
            channel,
        })
    }

    /// Forgets `channel` if it is still the shared one, so the next delivery reconnects.
    async fn discard(&self, channel: &Channel) {
        let mut link = self.link.lock().await;
        if link
            .as_ref()
            .is_some_and(|open| open.channel.id() == channel.id())
        {
            *link = None;
        }
    }
}

#[async_trait]
impl Sink for AmqpSink {
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let routing_key = self
            .routing_key
            .render(&event.source, &event.event_type, Cow::Borrowed);
        let routing_key = ShortString::try_new(routing_key).map_err(|_| {
            SinkError::permanent(format!(
                "routing key for event type {:?} is longer than {SHORT_STRING_MAX} bytes",
                event.event_type
            ))
        })?;
        let options = BasicPublishOptions {
            mandatory: self.mandatory,
            ..BasicPublishOptions::default()
        };

        let channel = self.channel().await?;
        let published = channel
            .basic_publish(
                self.exchange.clone(),
                routing_key.clone(),
                options,
                &event.payload,
                properties(event),
            )
            .await;
        let confirmation = match published {
            Ok(confirm) => confirm.await,
            Err(e) => Err(e),
        };

        let failed = |reason: String| {
            SinkError::retryable(format!(
                "AMQP publish to exchange {:?} with routing key {routing_key}: {reason}",
                self.exchange.as_str()
            ))
        };
        match confirmation {
            Ok(Confirmation::Ack(None)) => Ok(()),
            // With the mandatory flag, a message no queue is bound for comes back before
            // its ack; it was not stored anywhere.
            Ok(Confirmation::Ack(Some(_))) => Err(failed("no queue is bound for it".into())),
            Ok(Confirmation::Nack(_)) => Err(failed("the broker rejected it".into())),
            Ok(Confirmation::NotRequested) => Err(failed("publisher confirms are off".into())),
            Err(e) => {
                self.discard(&channel).await;
                Err(failed(e.to_string()))
            }
        }
    }
}

fn properties(event: &Event) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        SOURCE_HEADER.into(),
        AMQPValue::LongString(LongString::from(header_text(&event.source).as_bytes())),
    );
    headers.insert(
        EVENT_TYPE_HEADER.into(),
        AMQPValue::LongString(LongString::from(header_text(&event.event_type).as_bytes())),
    );

    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(message_id(&event.id))
        .with_timestamp(event.received_at_ms / 1000)
        .with_app_id("hookrelay".into())
        .with_headers(headers);
    if let Ok(kind) = ShortString::try_new(event.event_type.as_str()) {
        properties = properties.with_type(kind);
    }
    properties
}

/// Returns the event id, or `sha256:<hex>` of it when it does not fit a short string.
fn message_id(id: &str) -> ShortString {
    ShortString::try_new(id).unwrap_or_else(|_| {
        ShortString::from(format!("sha256:{}", hex::encode(Sha256::digest(id))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_id_becomes_a_digest() {
        let long = "x".repeat(300);
        let id = message_id(&long);
        assert!(id.as_str().starts_with("sha256:"), "{id}");
        assert_eq!(id.as_str().len(), 7 + 64);
        assert_eq!(message_id("evt_1").as_str(), "evt_1");
    }

    #[test]
    fn invalid_url_is_rejected() {
        assert!(AmqpSink::new("events", "http://x", "ex", "{event}", true).is_err());
        assert!(
            AmqpSink::new("events", "amqp://127.0.0.1:5672/%2f", "ex", "{event}", true).is_ok()
        );
    }
}
