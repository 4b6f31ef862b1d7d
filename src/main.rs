use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    hookrelay::cli::run().await
}
