//! The AMQP sink against the machine's RabbitMQ.

mod sink_support;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use sink_support::{AMQP_URL, SOURCE, Service, eventually, unique};
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(20);

/// A topic exchange and a queue bound to it for one test.
struct Broker {
    _connection: Connection,
    channel: Channel,
    exchange: String,
    queue: String,
}

impl Broker {
    async fn declare() -> Self {
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let exchange = unique("hooktest");
        let queue = unique("hooktest");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            _connection: connection,
            channel,
            exchange,
            queue,
        }
    }

    async fn bind(&self, pattern: &str) {
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Takes every message waiting in the queue.
    async fn drain(&self) -> Vec<(String, BasicProperties, Vec<u8>)> {
        let mut messages = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let delivery = message.delivery;
            messages.push((
                delivery.routing_key.to_string(),
                delivery.properties,
                delivery.data,
            ));
        }
        messages
    }

    async fn delete(self) {
        self.channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        self.channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
    }
}

fn amqp_sink(name: &str, exchange: &str) -> String {
    format!(
        r#"
        [[sinks]]
        name = "{name}"
        type = "amqp"
        url = "{AMQP_URL}"
        exchange = "{exchange}"
        routing_key = "{{source}}.{{event}}"
        [[routes]]
        source = "{SOURCE}"
        sinks = ["{name}"]
        "#
    )
}

fn header_text(properties: &BasicProperties, name: &str) -> String {
    let headers = properties.headers().as_ref().expect("message has headers");
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(text)) => String::from_utf8(text.as_bytes().to_vec()).unwrap(),
        other => panic!("header {name} is {other:?}"),
    }
}

fn message_id(properties: &BasicProperties) -> String {
    properties
        .message_id()
        .as_ref()
        .expect("message has a message_id")
        .to_string()
}

#[tokio::test]
async fn amqp_publishes_once_with_properties() {
    let broker = Broker::declare().await;
    broker.bind(&format!("{SOURCE}.#")).await;
    let service = Service::start(&amqp_sink("rabbit", &broker.exchange)).await;
    let id = unique("evt");

    assert_eq!(service.send(&id, "orders.created", "a".into()).await, 200);
    assert!(service.settled(SETTLE).await);

    let messages = broker.drain().await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let (routing_key, properties, body) = &messages[0];
    assert_eq!(routing_key, &format!("{SOURCE}.orders.created"));
    assert_eq!(message_id(properties), id);
    assert_eq!(*properties.delivery_mode(), Some(2));
    assert_eq!(
        properties.kind().as_ref().map(|k| k.to_string()),
        Some("orders.created".to_owned())
    );
    assert_eq!(header_text(properties, "Hookrelay-Source"), SOURCE);
    assert_eq!(
        header_text(properties, "Hookrelay-Event-Type"),
        "orders.created"
    );
    let body: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(body["data"], "a");

    service.stop().await;
    broker.delete().await;
}

#[tokio::test]
async fn amqp_unroutable_message_is_retried() {
    let broker = Broker::declare().await;
    let service = Service::start(&amqp_sink("rabbit", &broker.exchange)).await;
    let id = unique("evt");

    // No queue is bound yet, so the broker returns the mandatory message.
    assert_eq!(service.send(&id, "orders.created", 1.into()).await, 200);
    let retried = eventually(SETTLE, || async { service.stat(|s| &s.retried) > 0 }).await;
    assert!(retried, "unroutable publish was not retried");
    assert_eq!(service.inbox_len().await, 1);

    broker.bind("#").await;
    assert!(service.settled(SETTLE).await);
    let messages = broker.drain().await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(message_id(&messages[0].1), id);
    assert!(service.dead_letters().await.is_empty());

    service.stop().await;
    broker.delete().await;
}

/// Closes the broker connections whose client name is `connection_name`; returns how many.
fn close_connections(connection_name: &str) -> usize {
    let listed = Command::new("rabbitmqctl")
        .args(["--quiet", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(listed.status.success(), "{listed:?}");
    let text = String::from_utf8_lossy(&listed.stdout);
    let mut closed = 0;
    for line in text.lines().filter(|line| line.contains(connection_name)) {
        let pid = line.split_whitespace().next().unwrap();
        let status = Command::new("rabbitmqctl")
            .args([
                "--quiet",
                "close_connection",
                pid,
                "closed by a hookrelay test",
            ])
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success());
        closed += 1;
    }
    closed
}

#[tokio::test]
async fn amqp_closed_connection_loses_nothing() {
    let broker = Broker::declare().await;
    broker.bind("#").await;
    let sink = unique("rabbit");
    let service = Service::start(&amqp_sink(&sink, &broker.exchange)).await;
    let mut ids = Vec::new();

    for _ in 0..5 {
        let id = unique("evt");
        assert_eq!(service.send(&id, "orders.created", 1.into()).await, 200);
        ids.push(id);
    }
    assert!(service.settled(SETTLE).await);

    let closed = close_connections(&format!("hookrelay sink {sink}"));
    assert_eq!(
        closed, 1,
        "the sink's connection was not found on the broker"
    );
    for _ in 0..5 {
        let id = unique("evt");
        assert_eq!(service.send(&id, "orders.created", 2.into()).await, 200);
        ids.push(id);
    }
    assert!(service.settled(SETTLE).await);

    let messages = broker.drain().await;
    let received: HashSet<String> = messages.iter().map(|m| message_id(&m.1)).collect();
    assert_eq!(messages.len(), 10, "{received:?}");
    assert_eq!(received, ids.into_iter().collect::<HashSet<_>>());
    assert!(service.dead_letters().await.is_empty());

    service.stop().await;
    broker.delete().await;
}
