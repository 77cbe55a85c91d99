//! The Blueprint SDK's [`FaasExecutor`] on this platform.
//!
//! Any Blueprint can run a job here with
//! `BlueprintRunner::builder(..).with_faas_executor(job_id, PlatformExecutor::new(url))`.
//! Compared with the SDK's generic `HttpFaasExecutor` it
//!
//! - puts the call's Tangle call id and service id back on the result, so that
//!   `TangleConsumer` submits it (it discards results without them);
//! - turns a failing function into a job error (`JobResult::Err` carrying
//!   [`JobFailed`]) instead of an executor error, which would stop the runner;
//! - deploys a job's native binary with [`FaasExecutor::deploy_job`].
//!
//! Mapping onto the HTTP API (`docs/api.md`, `docs/blueprint.md`):
//!
//! | Method | Requests |
//! |---|---|
//! | `invoke` | `POST /job/{job_id}` |
//! | `deploy_job` | `POST /functions` (language `native`, a tar.gz holding the binary as executable `bootstrap`), then `PUT /jobs/{job_id}` |
//! | `health_check` | `HEAD /job/{job_id}` |
//! | `warm` | `GET /jobs`, `GET /functions/{id}/status` (checks only; see [`PlatformExecutor`]) |
//! | `get_deployment` | `GET /jobs`, `GET /functions/{id}` |
//! | `undeploy_job` | `DELETE /jobs/{job_id}`, `DELETE /functions/{name}` |

#![forbid(unsafe_code)]

use std::io::Write;

use base64::Engine;
use blueprint_core::metadata::{MetadataMap, MetadataValue};
use blueprint_core::{Bytes, JobCall, JobResult};
use blueprint_faas::{FaasConfig, FaasDeployment, FaasError, FaasExecutor, FaasPayload};
use blueprint_tangle_extra::extract::{CallId, ServiceId};
use faas_common::api::{BindJob, ErrorBody, FaasJobResponse, FunctionInfo, JobList};
use faas_common::FunctionDefinition;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

/// Name of the executable in every archive `deploy_job` uploads.
pub const BOOTSTRAP: &str = "bootstrap";

/// Function names `deploy_job` uses: this prefix and the job id.
pub const DEFAULT_FUNCTION_PREFIX: &str = "blueprint-job-";

/// A job whose function ran and failed, or that the platform refused to run
/// (unbound job, payload too large, no capacity): the job error `invoke` returns.
#[derive(Debug, Clone, thiserror::Error)]
#[error("job {job_id} failed on the FaaS platform (HTTP {status}): {message}")]
pub struct JobFailed {
    /// The job.
    pub job_id: u32,
    /// HTTP status of `POST /job/{job_id}`.
    pub status: u16,
    /// The platform's one-line reason.
    pub message: String,
    /// What the function printed, when it ran.
    pub logs: Option<String>,
    /// The invocation's request id, when it ran.
    pub request_id: Option<String>,
}

/// How a request to the platform failed.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{method} {url}: {source}")]
    Transport {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url}: HTTP {status}: {message}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{method} {url}: unexpected response: {source}")]
    Decode {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl From<ApiError> for FaasError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Decode { .. } => FaasError::SerializationError(e.to_string()),
            other => FaasError::InfrastructureError(other.to_string()),
        }
    }
}

/// [`FaasExecutor`] against a running platform (`faas serve` or `faas-bin`).
///
/// `warm` does not start an instance: the platform keeps an instance warm for
/// its idle timeout after every invocation, and has no way to start one
/// without running the function, which would hand user code an input it never
/// asked for. It checks that the job is bound and its function deployed
/// (an error otherwise), so a Blueprint can call it at start-up as a
/// readiness check.
#[derive(Debug, Clone)]
pub struct PlatformExecutor {
    base_url: String,
    prefix: String,
    http: reqwest::Client,
}

impl PlatformExecutor {
    /// An executor for the platform at `base_url` (`http://host:port`).
    pub fn new(base_url: impl Into<String>) -> Self {
        PlatformExecutor {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            prefix: DEFAULT_FUNCTION_PREFIX.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// Authenticate every request with `key` (`Authorization: Bearer`); the
    /// key's tenant owns the functions and job bindings this executor makes.
    /// The key never enters a URL, so no endpoint this executor reports
    /// carries it.
    pub fn with_api_key(mut self, key: &str) -> Result<Self, FaasError> {
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                FaasError::InfrastructureError(
                    "the API key holds characters a header cannot".into(),
                )
            })?;
        value.set_sensitive(true);
        let headers =
            reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
        self.http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .map_err(|e| FaasError::InfrastructureError(format!("HTTP client: {e}")))?;
        Ok(self)
    }

    /// Name functions deployed by `deploy_job` `<prefix><job_id>` (default
    /// [`DEFAULT_FUNCTION_PREFIX`]), so several Blueprints can share a platform.
    pub fn with_function_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The name `deploy_job` gives job `job_id`'s function.
    pub fn function_name(&self, job_id: u32) -> String {
        format!("{}{job_id}", self.prefix)
    }

    /// The SDK protocol's endpoint of `job_id`.
    pub fn job_endpoint(&self, job_id: u32) -> String {
        format!("{}/job/{job_id}", self.base_url)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: &'static str,
        request: reqwest::RequestBuilder,
        url: String,
    ) -> Result<T, ApiError> {
        let response = request.send().await.map_err(|source| ApiError::Transport {
            method,
            url: url.clone(),
            source,
        })?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(ApiError::Status {
                method,
                url,
                status: status.as_u16(),
                message: error_message(&text),
            });
        }
        response.json().await.map_err(|source| ApiError::Decode {
            method,
            url,
            source,
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let url = self.url(path);
        self.send("GET", self.http.get(&url), url).await
    }

    /// DELETE `path`; `Ok(false)` when there was nothing to delete (404).
    async fn delete(&self, path: &str) -> Result<bool, ApiError> {
        let url = self.url(path);
        match self
            .send::<serde_json::Value>("DELETE", self.http.delete(&url), url)
            .await
        {
            Ok(_) => Ok(true),
            Err(ApiError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The function bound to `job_id`.
    async fn bound_function(&self, job_id: u32) -> Result<FunctionInfo, FaasError> {
        let jobs: JobList = self.get("/jobs").await?;
        let binding = jobs
            .jobs
            .into_iter()
            .find(|b| b.job_id == job_id)
            .ok_or_else(|| {
                FaasError::InfrastructureError(format!(
                    "job {job_id} is not bound to a function on {}",
                    self.base_url
                ))
            })?;
        Ok(self
            .get(&format!("/functions/{}", binding.function_id))
            .await?)
    }

    fn deployment(&self, job_id: u32, f: &FunctionInfo) -> FaasDeployment {
        FaasDeployment {
            function_id: f.id.clone(),
            job_id,
            endpoint: self.job_endpoint(job_id),
            cold_start_ms: None,
            memory_mb: f.memory_mb,
            timeout_secs: f.timeout_sec,
        }
    }
}

#[async_trait::async_trait]
impl FaasExecutor for PlatformExecutor {
    async fn invoke(&self, job_call: JobCall) -> Result<JobResult, FaasError> {
        let tangle_ids = tangle_ids(job_call.metadata());
        let payload = FaasPayload::from(job_call);
        let job_id = payload.job_id;
        let url = self.job_endpoint(job_id);
        let response = self
            .http
            .post(&url)
            .json(&payload)
            .send()
            .await
            .map_err(|source| ApiError::Transport {
                method: "POST",
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        if status != StatusCode::OK {
            let text = response.text().await.unwrap_or_default();
            let body: Option<ErrorBody> = serde_json::from_str(&text).ok();
            let failed = JobFailed {
                job_id,
                status: status.as_u16(),
                message: error_message(&text),
                logs: body.as_ref().and_then(|b| b.logs.clone()),
                request_id: body.and_then(|b| b.request_id),
            };
            tracing::warn!(job_id, "{failed}");
            return Ok(JobResult::Err(blueprint_core::Error::new(failed)));
        }
        let body: FaasJobResponse = response.json().await.map_err(|source| ApiError::Decode {
            method: "POST",
            url,
            source,
        })?;
        let mut result = JobResult::new(Bytes::from(body.result));
        if let Some(metadata) = result.metadata_mut() {
            for (key, value) in tangle_ids {
                metadata.insert(key, value);
            }
        }
        Ok(result)
    }

    async fn deploy_job(
        &self,
        job_id: u32,
        binary: &[u8],
        config: &FaasConfig,
    ) -> Result<FaasDeployment, FaasError> {
        let archive = bootstrap_archive(binary)
            .map_err(|e| FaasError::SerializationError(format!("packing the binary: {e}")))?;
        let definition = FunctionDefinition {
            name: self.function_name(job_id),
            language: "native".into(),
            handler: BOOTSTRAP.into(),
            code_base64: Some(base64::engine::general_purpose::STANDARD.encode(archive)),
            memory_mb: Some(config.memory_mb),
            timeout_sec: Some(config.timeout_secs),
            env: config.env_vars.clone().into_iter().collect(),
            ..FunctionDefinition::default()
        };
        let url = self.url("/functions");
        let info: FunctionInfo = self
            .send("POST", self.http.post(&url).json(&definition), url)
            .await?;
        let url = self.url(&format!("/jobs/{job_id}"));
        let _: serde_json::Value = self
            .send(
                "PUT",
                self.http.put(&url).json(&BindJob {
                    function: info.id.clone(),
                }),
                url,
            )
            .await?;
        tracing::info!(
            job_id,
            function = %info.name,
            version = info.version,
            "deployed job binary"
        );
        Ok(self.deployment(job_id, &info))
    }

    async fn health_check(&self, job_id: u32) -> Result<bool, FaasError> {
        let url = self.job_endpoint(job_id);
        let response = self
            .http
            .head(&url)
            .send()
            .await
            .map_err(|source| ApiError::Transport {
                method: "HEAD",
                url,
                source,
            })?;
        Ok(response.status().is_success())
    }

    async fn warm(&self, job_id: u32) -> Result<(), FaasError> {
        let f = self.bound_function(job_id).await?;
        let _: serde_json::Value = self.get(&format!("/functions/{}/status", f.id)).await?;
        Ok(())
    }

    async fn get_deployment(&self, job_id: u32) -> Result<FaasDeployment, FaasError> {
        let f = self.bound_function(job_id).await?;
        Ok(self.deployment(job_id, &f))
    }

    async fn undeploy_job(&self, job_id: u32) -> Result<(), FaasError> {
        self.delete(&format!("/jobs/{job_id}")).await?;
        self.delete(&format!("/functions/{}", self.function_name(job_id)))
            .await?;
        Ok(())
    }

    fn provider_name(&self) -> &'static str {
        "FaaS-Blueprint"
    }
}

/// The call id and service id `TangleConsumer` needs on a result.
fn tangle_ids(metadata: &MetadataMap<MetadataValue>) -> Vec<(&'static str, MetadataValue)> {
    [CallId::METADATA_KEY, ServiceId::METADATA_KEY]
        .into_iter()
        .filter_map(|key| metadata.get(key).map(|v| (key, v.clone())))
        .collect()
}

/// The `error` of a JSON error body, else the body itself.
fn error_message(text: &str) -> String {
    serde_json::from_str::<ErrorBody>(text)
        .map(|b| b.error)
        .unwrap_or_else(|_| text.trim().to_string())
}

/// A tar.gz holding `binary` as the executable file [`BOOTSTRAP`].
fn bootstrap_archive(binary: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut header = tar::Header::new_gnu();
    header.set_size(binary.len() as u64);
    header.set_mode(0o755);
    header.set_entry_type(tar::EntryType::Regular);
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_data(&mut header, BOOTSTRAP, binary)?;
    let raw = tar.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw)?;
    gz.finish()
}
