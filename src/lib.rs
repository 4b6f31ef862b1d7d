//! hookrelay receives signed webhooks, stores each event before it responds, and forwards it to
//! downstream queues.
//!
//! The modules follow one event through the service:
//! - [`receive`]: `POST /webhooks/{source}`, body limits and the status contract;
//! - [`verify`]: one signature scheme per file behind a common trait;
//! - [`store`]: the atomic accept (idempotency key plus inbox), retries and dead letters;
//! - [`worker`]: claims inbox entries, routes them, retries with backoff;
//! - [`sink`]: the downstream destinations.
//!
//! [`config`] reads the settings, [`ops`] serves health checks and metrics, [`app`] wires the
//! parts together for the binary and tests, [`send`] signs test deliveries, and [`check`]
//! validates a config for `hookrelay check-config`.

pub mod app;
pub mod check;
pub mod cli;
pub mod config;
pub mod event;
pub mod ops;
pub mod receive;
pub mod send;
pub mod server;
pub mod sink;
pub mod store;
pub mod telemetry;
pub mod verify;
pub mod worker;
