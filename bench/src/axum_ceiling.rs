//! `bench-axum`: the HTTP ceiling for `scripts/bench-peers`. A bare axum
//! server on the same Tokio runtime configuration the gateway uses, whose
//! only route answers `GET /` and `POST /` with a constant body. Whatever a
//! load generator measures against it is the cost of HTTP on this machine;
//! the platform's warm path can only add to it.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::{routing::get, Router};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Serve a constant on GET/POST / (the HTTP ceiling for bench-peers)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8091")]
    listen: SocketAddr,
}

/// The response of a no-op function, so the bytes on the wire match the
/// platform's answer to the benchmark's `{}` payload.
async fn constant() -> &'static str {
    "{}"
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let app = Router::new().route("/", get(constant).post(constant));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!("bench-axum listening on {}", args.listen);
    axum::serve(listener, app).await.context("serving")
}
