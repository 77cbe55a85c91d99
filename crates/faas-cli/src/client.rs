//! HTTP client of the platform's API.

use anyhow::{anyhow, Context, Result};
use clap::Args;
use faas_common::api::ErrorBody;
use reqwest::{Method, RequestBuilder, Response};

/// Where the server is.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// Base URL of the FaaS server.
    #[arg(
        long,
        env = "FAAS_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Print JSON instead of human output.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A client bound to one server.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `args.server`.
    pub fn new(args: &ServerArgs) -> Result<Client> {
        let http = reqwest::Client::builder()
            .build()
            .context("cannot build HTTP client")?;
        Ok(Client {
            base: args.server.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// A request to `path` (which starts with `/`).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Send; a non-2xx answer becomes an error carrying the server's message.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach {}: {}", self.base, root_cause(&e)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(api_error(resp).await)
    }

    /// Send and decode a JSON answer.
    pub async fn json<T: serde::de::DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        let resp = self.send(req).await?;
        resp.json().await.context("unexpected response from server")
    }
}

/// The server's `{"error": ...}` as an error, with the function's logs if any.
pub async fn api_error(resp: Response) -> anyhow::Error {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => {
            if let Some(logs) = body.logs.as_deref().filter(|l| !l.is_empty()) {
                eprint!("{logs}");
                if !logs.ends_with('\n') {
                    eprintln!();
                }
            }
            anyhow!("{} ({})", body.error, status.as_u16())
        }
        Err(_) => anyhow!("server answered {status}: {}", text.trim()),
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
