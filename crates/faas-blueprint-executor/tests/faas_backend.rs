//! The platform as a FaaS backend of another Blueprint: a `BlueprintRunner`
//! with `.with_faas_executor(job_id, ...)` against a real `faas serve`, first
//! with the SDK's own `HttpFaasExecutor`, then with our `PlatformExecutor`,
//! which also deploys the job's native binary itself, and the SDK's executor
//! again through the Custom FaaS Platform Spec's endpoint.

use std::time::Duration;

use alloy_sol_types::SolValue;
use blueprint_core::error::BoxError;
use blueprint_core::job::call::Parts;
use blueprint_core::metadata::MetadataMap;
use blueprint_core::{Bytes, Job, JobCall, JobResult};
use blueprint_faas::custom::HttpFaasExecutor;
use blueprint_faas::{FaasConfig, FaasExecutor};
use blueprint_router::Router;
use blueprint_runner::config::BlueprintEnvironment;
use blueprint_runner::BlueprintRunner;
use blueprint_tangle_extra::extract::{CallId, JobIndex, ServiceId, TangleArg, TangleResult};
use blueprint_tangle_extra::TangleLayer;
use faas_blueprint_executor::PlatformExecutor;
use faas_tester::{b64, require, Executor, TestServer};
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::StreamExt;
use serde_json::json;

/// The job run locally on the same runner.
const LOCAL_JOB: u32 = 0;
/// The job offloaded to the platform.
const SQUARE_JOB: u32 = 1;
const SERVICE_ID: u64 = 3;

/// The job's native binary: reads the ABI-encoded `uint64`, writes the
/// ABI-encoded square; fails with status 4 on 13.
const SQUARE_C: &str = r#"
#include <stdio.h>
#include <stdint.h>
int main(void) {
    unsigned char in[32];
    if (fread(in, 1, 32, stdin) != 32) { fprintf(stderr, "want 32 bytes\n"); return 2; }
    uint64_t x = 0;
    for (int i = 24; i < 32; i++) x = (x << 8) | in[i];
    if (x == 13) { fprintf(stderr, "13 is unlucky\n"); return 4; }
    uint64_t y = x * x;
    unsigned char out[32] = {0};
    for (int i = 31; i >= 24; i--) { out[i] = y & 0xff; y >>= 8; }
    fwrite(out, 1, 32, stdout);
    return 0;
}
"#;

/// Compile [`SQUARE_C`] statically: a real ELF that needs nothing from the image.
fn square_binary() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("square.c");
    std::fs::write(&src, SQUARE_C).expect("write source");
    let bin = dir.path().join("square");
    let status = std::process::Command::new("cc")
        .args(["-O2", "-static", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed");
    std::fs::read(bin).expect("read binary")
}

/// The local job: doubles its argument.
async fn double(TangleArg((x,)): TangleArg<(u64,)>) -> TangleResult<u64> {
    TangleResult(x * 2)
}

/// A runner with a local job 0 and job 1 offloaded to `executor`.
struct Runner {
    calls: UnboundedSender<Result<JobCall, BoxError>>,
    results: UnboundedReceiver<JobResult>,
    task: tokio::task::JoinHandle<()>,
    next_call_id: u64,
}

impl Runner {
    fn start(executor: impl FaasExecutor + 'static) -> Runner {
        let (calls, producer) = unbounded::<Result<JobCall, BoxError>>();
        let (consumer, results) = unbounded::<JobResult>();
        let mut env = BlueprintEnvironment::default();
        env.test_mode = true;
        env.dry_run = true;
        let task = tokio::spawn(async move {
            let outcome = BlueprintRunner::builder((), env)
                .router(Router::new().route(LOCAL_JOB, double.layer(TangleLayer)))
                .with_faas_executor(SQUARE_JOB, executor)
                .producer(producer)
                .consumer(consumer)
                .run()
                .await;
            if let Err(e) = outcome {
                let message = e.to_string();
                assert!(message.contains("producer"), "runner failed: {message}");
            }
        });
        Runner {
            calls,
            results,
            task,
            next_call_id: 0,
        }
    }

    /// Send `x` to `job` as `TangleProducer` would; wait for its result.
    async fn call(&mut self, job: u32, x: u64) -> (u64, JobResult) {
        self.next_call_id += 1;
        let call_id = self.next_call_id;
        let mut metadata = MetadataMap::new();
        metadata.insert(CallId::METADATA_KEY, call_id);
        metadata.insert(ServiceId::METADATA_KEY, SERVICE_ID);
        metadata.insert(JobIndex::METADATA_KEY, [job as u8]);
        let call = JobCall::from_parts(
            Parts::new(job).with_metadata(metadata),
            Bytes::from(x.abi_encode()),
        );
        self.calls.unbounded_send(Ok(call)).expect("runner listens");
        let result = tokio::time::timeout(Duration::from_secs(120), self.results.next())
            .await
            .unwrap_or_else(|_| panic!("no result for job {job} within 120 s"))
            .expect("runner stopped");
        (call_id, result)
    }

    async fn stop(self) {
        drop(self.calls);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

fn decoded(result: &JobResult) -> u64 {
    match result {
        JobResult::Ok { body, .. } => u64::abi_decode(body).expect("ABI uint64"),
        JobResult::Err(e) => panic!("job error: {e}"),
    }
}

fn call_id_of(result: &JobResult) -> Option<u64> {
    result
        .metadata()?
        .get(CallId::METADATA_KEY)
        .and_then(|v| u64::try_from(v).ok())
}

fn service_id_of(result: &JobResult) -> Option<u64> {
    result
        .metadata()?
        .get(ServiceId::METADATA_KEY)
        .and_then(|v| u64::try_from(v).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_http_executor_gets_the_bound_function_result() {
    if !require(
        Executor::Native,
        "sdk_http_executor_gets_the_bound_function_result",
    ) {
        return;
    }
    let server = TestServer::start(Executor::Native).await;
    let (status, v) = server
        .post_json(
            "/functions",
            &json!({"name": "square", "language": "native", "handler": "square",
                    "code_base64": b64(&square_binary())}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let bound = server
        .http()
        .put(format!("{}/jobs/{SQUARE_JOB}", server.url))
        .json(&json!({"function": "square"}))
        .send()
        .await
        .expect("PUT /jobs");
    assert_eq!(bound.status(), 200);

    // The SDK's executor sends no header: the key rides in a capability URL.
    let key = server.admin_key.clone().expect("auth is on");
    let sdk = HttpFaasExecutor::new(format!("{}/k/{key}", server.url));
    assert!(sdk.health_check(SQUARE_JOB).await.expect("HEAD /job"));
    assert!(!sdk.health_check(SQUARE_JOB + 1).await.expect("HEAD /job"));

    let mut runner = Runner::start(sdk);
    let (_, result) = runner.call(SQUARE_JOB, 12).await;
    assert_eq!(decoded(&result), 144);
    // The SDK's executor drops the call's metadata: TangleConsumer would discard
    // this result. (PlatformExecutor puts it back; see the next test.)
    assert_eq!(call_id_of(&result), None);
    // Local jobs keep working beside the offloaded one, with their metadata.
    let (call_id, result) = runner.call(LOCAL_JOB, 21).await;
    assert_eq!(decoded(&result), 42);
    assert_eq!(call_id_of(&result), Some(call_id));
    runner.stop().await;
    server.stop_and_check_clean().await;
}

/// A spec bootstrap (`{"job_id","args"}` in, `{"result"}` out) squaring the
/// last byte of the ABI-encoded argument: right for arguments below 16.
const SPEC_BOOTSTRAP: &str = r#"#!/bin/sh
in=$(cat)
args=${in#*'"args":['}
args=${args%%]*}
last=${args##*,}
printf '{"result":[%s,%s],"success":true}' "${args%,*}" $((last * last))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_http_executor_uses_the_custom_faas_spec_endpoint() {
    if !require(
        Executor::Native,
        "sdk_http_executor_uses_the_custom_faas_spec_endpoint",
    ) {
        return;
    }
    let server = TestServer::start(Executor::Native).await;
    let deployed = server
        .http()
        .put(format!("{}/api/functions/square-spec", server.url))
        .header("content-type", "application/zip")
        .body(faas_tester::zip(&[(
            "bootstrap",
            SPEC_BOOTSTRAP.as_bytes(),
        )]))
        .send()
        .await
        .expect("PUT /api/functions");
    assert_eq!(deployed.status(), 200);

    // The spec's integration: the job's endpoint is the function's invoke
    // URL (the key in the path: the SDK's executor sends no header).
    let key = server.admin_key.clone().expect("auth is on");
    let base = format!("{}/k/{key}", server.url);
    let sdk = HttpFaasExecutor::new(&base).with_job_endpoint(
        SQUARE_JOB,
        format!("{base}/api/functions/square-spec/invoke"),
    );
    assert!(sdk.health_check(SQUARE_JOB).await.expect("HEAD invoke"));
    let mut runner = Runner::start(sdk);
    let (_, result) = runner.call(SQUARE_JOB, 12).await;
    assert_eq!(decoded(&result), 144);
    let (_, result) = runner.call(SQUARE_JOB, 3).await;
    assert_eq!(decoded(&result), 9);
    runner.stop().await;
    let (status, v) = server.get("/api/functions/square-spec/health").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total_invocations"], 2);
    server.stop_and_check_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_executor_deploys_and_runs_a_native_job_binary() {
    if !require(
        Executor::Native,
        "platform_executor_deploys_and_runs_a_native_job_binary",
    ) {
        return;
    }
    let server = TestServer::start(Executor::Native).await;
    let executor = PlatformExecutor::new(server.url.clone())
        .with_api_key(server.admin_key.as_deref().expect("auth is on"))
        .unwrap();
    assert!(!executor.health_check(SQUARE_JOB).await.unwrap());
    assert!(executor.warm(SQUARE_JOB).await.is_err(), "unbound job");

    let config = FaasConfig {
        memory_mb: 64,
        timeout_secs: 20,
        ..FaasConfig::default()
    };
    let deployment = executor
        .deploy_job(SQUARE_JOB, &square_binary(), &config)
        .await
        .expect("deploy_job");
    assert!(deployment.function_id.starts_with("fn-"), "{deployment:?}");
    assert_eq!(deployment.job_id, SQUARE_JOB);
    assert_eq!(
        deployment.endpoint,
        format!("{}/job/{SQUARE_JOB}", server.url)
    );
    assert_eq!((deployment.memory_mb, deployment.timeout_secs), (64, 20));
    let (_, info) = server
        .get(&format!("/functions/{}", deployment.function_id))
        .await;
    assert_eq!(info["name"], executor.function_name(SQUARE_JOB));
    assert_eq!(info["language"], "native");
    assert_eq!(info["handler"], "bootstrap");

    assert!(executor.health_check(SQUARE_JOB).await.unwrap());
    executor.warm(SQUARE_JOB).await.expect("warm");
    let got = executor
        .get_deployment(SQUARE_JOB)
        .await
        .expect("get_deployment");
    assert_eq!(got.function_id, deployment.function_id);

    let mut runner = Runner::start(executor.clone());
    let (call_id, result) = runner.call(SQUARE_JOB, 12).await;
    assert_eq!(decoded(&result), 144);
    // The ids TangleConsumer needs are on the result.
    assert_eq!(call_id_of(&result), Some(call_id));
    assert_eq!(service_id_of(&result), Some(SERVICE_ID));

    // A failing function is a job error with its message; the runner goes on.
    let (_, result) = runner.call(SQUARE_JOB, 13).await;
    match &result {
        JobResult::Err(e) => {
            let message = e.to_string();
            assert!(message.contains("HTTP 500"), "{message}");
            assert!(message.contains("status 4"), "{message}");
        }
        JobResult::Ok { .. } => panic!("13 must fail"),
    }
    let (_, result) = runner.call(SQUARE_JOB, 3).await;
    assert_eq!(decoded(&result), 9);
    let (_, result) = runner.call(LOCAL_JOB, 5).await;
    assert_eq!(decoded(&result), 10);
    runner.stop().await;

    executor
        .undeploy_job(SQUARE_JOB)
        .await
        .expect("undeploy_job");
    assert!(!executor.health_check(SQUARE_JOB).await.unwrap());
    let (status, _) = server
        .get(&format!("/functions/{}", deployment.function_id))
        .await;
    assert_eq!(status, 404);
    // Undeploying twice is harmless.
    executor
        .undeploy_job(SQUARE_JOB)
        .await
        .expect("undeploy_job again");
    server.stop_and_check_clean().await;
}
