//! The baseline for accept throughput: a minimal axum receiver that responds to each
//! `POST /webhooks/{source}` after one Redis `XADD` of the body, with no signature check, no
//! duplicate check and no worker.
//!
//! ```text
//! cargo run --release --example xadd_receiver -- --listen 127.0.0.1:18100
//! ```

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use clap::Parser;
use redis::aio::ConnectionManager;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18100")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Stream the bodies are added to; deleted on startup.
    #[arg(long, default_value = "bench:xadd-receiver")]
    stream: String,
}

#[derive(Clone)]
struct AppState {
    conn: ConnectionManager,
    stream: String,
}

async fn receive(State(state): State<AppState>, body: Bytes) -> (StatusCode, &'static str) {
    let mut conn = state.conn.clone();
    let added: redis::RedisResult<String> = redis::cmd("XADD")
        .arg(&state.stream)
        .arg("*")
        .arg("payload")
        .arg(body.as_ref())
        .query_async(&mut conn)
        .await;
    match added {
        Ok(_) => (StatusCode::OK, r#"{"status":"accepted"}"#),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"unavailable"}"#,
        ),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let client = redis::Client::open(args.redis_url.as_str()).expect("Redis URL");
    let mut conn = ConnectionManager::new(client)
        .await
        .expect("connect to Redis");
    let _: () = redis::cmd("DEL")
        .arg(&args.stream)
        .query_async(&mut conn)
        .await
        .expect("DEL the stream");

    let state = AppState {
        conn,
        stream: args.stream,
    };
    let app = Router::new()
        .route("/webhooks/{source}", post(receive))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .expect("bind the listen address");
    println!("listening on {}", args.listen);
    axum::serve(listener, app).await.expect("serve");
}
