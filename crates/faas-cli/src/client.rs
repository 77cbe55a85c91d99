//! HTTP client of the platform's API.
//!
//! Where the server is and which key to send come from, first to last: the
//! flags (`--server`, `--api-key`, `--ca-cert`), the environment
//! (`FAAS_SERVER`, `FAAS_API_KEY`, `FAAS_CA_CERT`), the profile file
//! (`$FAAS_PROFILE`, else `~/.config/faas/profile.toml`), and, for root
//! talking to a server on this machine, the admin key the server wrote
//! (`/var/lib/faas/admin.key`, or `$FAAS_DATA_DIR/admin.key`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use faas_common::api::ErrorBody;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, Response};
use serde::Deserialize;

/// The server when nothing names one.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
/// The data directory `faas serve` uses when nothing names one.
const DEFAULT_DATA_DIR: &str = "/var/lib/faas";
/// Largest profile or key file read.
const MAX_CREDENTIAL_FILE: u64 = 64 * 1024;

/// Where the server is and how to authenticate.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// Base URL of the FaaS server [default: the profile's, else http://127.0.0.1:8080].
    #[arg(long, env = "FAAS_SERVER", global = true)]
    pub server: Option<String>,
    /// API key (`Authorization: Bearer`) [default: the profile's, else the
    /// local admin key when run as root].
    #[arg(long, env = "FAAS_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// PEM certificate to trust for an HTTPS server (besides the usual roots).
    #[arg(long, env = "FAAS_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Print JSON instead of human output.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `~/.config/faas/profile.toml`: defaults for the flags above.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    server: Option<String>,
    api_key: Option<String>,
    ca_cert: Option<PathBuf>,
}

impl Profile {
    fn path() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("FAAS_PROFILE") {
            return Some(PathBuf::from(path));
        }
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(config.join("faas").join("profile.toml"))
    }

    fn load() -> Result<Profile> {
        let Some(path) = Profile::path() else {
            return Ok(Profile::default());
        };
        let Some(text) = read_small(&path)? else {
            return Ok(Profile::default());
        };
        toml::from_str(&text).with_context(|| format!("profile {}", path.display()))
    }
}

/// A small text file, `None` when it does not exist.
fn read_small(path: &Path) -> Result<Option<String>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_CREDENTIAL_FILE)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(text))
}

/// Whether `server` is on this machine (where the admin key file applies).
fn is_local(server: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(server) else {
        return false;
    };
    matches!(
        url.host_str(),
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
    )
}

/// The admin key `faas serve` wrote, when root talks to a local server.
fn local_admin_key(server: &str) -> Result<Option<String>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 || !is_local(server) {
        return Ok(None);
    }
    let dir = std::env::var_os("FAAS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    Ok(read_small(&dir.join("admin.key"))?.map(|k| k.trim().to_string()))
}

/// A client bound to one server.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the server and key `args` (or the profile) name.
    pub fn new(args: &ServerArgs) -> Result<Client> {
        let profile = Profile::load()?;
        let server = args
            .server
            .clone()
            .or(profile.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let key = match args.api_key.clone().or(profile.api_key) {
            Some(key) => Some(key),
            None => local_admin_key(&server)?,
        };
        let mut builder = reqwest::Client::builder();
        if let Some(key) = key.filter(|k| !k.is_empty()) {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| anyhow!("the API key holds characters a header cannot"))?;
            value.set_sensitive(true);
            builder = builder.default_headers(HeaderMap::from_iter([(AUTHORIZATION, value)]));
        }
        if let Some(path) = args.ca_cert.clone().or(profile.ca_cert) {
            let pem = read_small(&path)?
                .ok_or_else(|| anyhow!("CA certificate {} does not exist", path.display()))?;
            let cert = reqwest::Certificate::from_pem(pem.as_bytes())
                .with_context(|| format!("CA certificate {}", path.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        if !server.starts_with("http://") && !server.starts_with("https://") {
            bail!("server {server:?} is not an http:// or https:// URL");
        }
        let http = builder.build().context("cannot build HTTP client")?;
        Ok(Client {
            base: server.trim_end_matches('/').to_string(),
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
