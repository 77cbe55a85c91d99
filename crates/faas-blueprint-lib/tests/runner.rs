//! The production path: `faas-bin`'s router and handlers under a real
//! `BlueprintRunner` (test mode), fed `JobCall`s built exactly as
//! `TangleProducer` builds them, with ABI-encoded bodies, on a real platform
//! (native sandbox). Results are decoded as the chain's consumer would.

use std::time::Duration;

use alloy_primitives::Bytes as AbiBytes;
use alloy_sol_types::SolValue;
use blueprint_core::error::BoxError;
use blueprint_core::job::call::Parts;
use blueprint_core::metadata::MetadataMap;
use blueprint_core::{Bytes, JobCall, JobResult};
use blueprint_runner::config::BlueprintEnvironment;
use blueprint_runner::BlueprintRunner;
use blueprint_tangle_extra::extract::{
    BlockHash, BlockNumber, CallId, Caller, JobIndex, ServiceId, Timestamp,
};
use faas_blueprint_lib::{FaaSContext, DEPLOY_FUNCTION, EXECUTE_FUNCTION, INVOKE_FUNCTION};
use faas_platform::{Flags, PlatformConfig};
use faas_tester::{bin_dir, images_dir, require, Executor};
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::StreamExt;
use serde_json::json;

const SERVICE_ID: u64 = 7;

/// A running `BlueprintRunner` with the platform's router, and its channels.
struct Harness {
    calls: UnboundedSender<Result<JobCall, BoxError>>,
    results: UnboundedReceiver<JobResult>,
    runner: tokio::task::JoinHandle<()>,
    ctx: FaaSContext,
    next_call_id: u64,
    _data: tempfile::TempDir,
}

impl Harness {
    async fn start(executor: Executor) -> Harness {
        let data = tempfile::tempdir().expect("temp dir");
        let flags = Flags {
            executor: Some(executor.as_str().into()),
            images_dir: Some(images_dir()),
            agent_path: Some(bin_dir().join("faas-guest-agent")),
            cgroup_parent: Some(format!(
                "faas-bp-test-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )),
            attestation: Some("off".into()),
            ..Flags::default()
        };
        let config = PlatformConfig::resolve(&flags, Some(data.path().to_path_buf()))
            .expect("valid settings");
        let mut env = BlueprintEnvironment::default();
        env.test_mode = true;
        env.dry_run = true;
        let progress = |line: &str| eprintln!("[images] {line}");
        let platform = faas_platform::build(config, &progress)
            .await
            .expect("platform starts");
        let ctx = FaaSContext::new(platform, env.clone());

        let (calls, producer) = unbounded::<Result<JobCall, BoxError>>();
        let (consumer, results) = unbounded::<JobResult>();
        let router = faas_blueprint_lib::router(ctx.clone());
        let runner = tokio::spawn(async move {
            let outcome = BlueprintRunner::builder((), env)
                .router(router)
                .producer(producer)
                .consumer(consumer)
                .run()
                .await;
            // Only the end of the producer stream (the harness dropped) may stop it.
            if let Err(e) = outcome {
                let message = e.to_string();
                assert!(message.contains("producer"), "runner failed: {message}");
            }
        });
        Harness {
            calls,
            results,
            runner,
            ctx,
            next_call_id: 100,
            _data: data,
        }
    }

    /// Send `body` to `job` as the chain would and wait for its one result.
    async fn call(&mut self, job: u8, body: Vec<u8>) -> JobResult {
        self.next_call_id += 1;
        let call_id = self.next_call_id;
        self.calls
            .unbounded_send(Ok(tangle_call(job, call_id, body)))
            .expect("runner is listening");
        let result = tokio::time::timeout(Duration::from_secs(120), self.results.next())
            .await
            .unwrap_or_else(|_| panic!("no result for job {job} call {call_id} within 120 s"))
            .expect("runner stopped");
        if let JobResult::Ok { head, .. } = &result {
            // TangleLayer puts the ids back: TangleConsumer needs them to submit.
            let got: u64 = head
                .metadata
                .get(CallId::METADATA_KEY)
                .and_then(|v| u64::try_from(v).ok())
                .expect("result carries the call id");
            assert_eq!(got, call_id);
            let service: u64 = head
                .metadata
                .get(ServiceId::METADATA_KEY)
                .and_then(|v| u64::try_from(v).ok())
                .expect("result carries the service id");
            assert_eq!(service, SERVICE_ID);
        }
        result
    }

    async fn stop(self) {
        drop(self.calls);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.runner).await;
        self.ctx.orchestrator().shutdown().await;
        // The instances are gone; their (now empty) parent cgroup goes too.
        let parent = &self.ctx.platform().config.native.cgroup_parent;
        for controller in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(controller.path().join(parent));
        }
    }
}

/// A `JobCall` as `TangleProducer` makes it from a `JobSubmitted` event.
fn tangle_call(job: u8, call_id: u64, body: Vec<u8>) -> JobCall {
    let mut metadata = MetadataMap::new();
    metadata.insert(CallId::METADATA_KEY, call_id);
    metadata.insert(ServiceId::METADATA_KEY, SERVICE_ID);
    metadata.insert(JobIndex::METADATA_KEY, [job]);
    metadata.insert(BlockNumber::METADATA_KEY, 1_000 + call_id);
    metadata.insert(BlockHash::METADATA_KEY, [0xab_u8; 32]);
    metadata.insert(Timestamp::METADATA_KEY, 1_750_000_000_u64);
    metadata.insert(Caller::METADATA_KEY, [0x11_u8; 20]);
    JobCall::from_parts(Parts::new(job).with_metadata(metadata), Bytes::from(body))
}

fn ok_body(result: JobResult) -> Bytes {
    match result {
        JobResult::Ok { body, .. } => body,
        JobResult::Err(e) => panic!("expected a result, got job error: {e}"),
    }
}

fn err_message(result: JobResult) -> String {
    match result {
        JobResult::Err(e) => e.to_string(),
        JobResult::Ok { body, .. } => panic!("expected a job error, got result {body:?}"),
    }
}

fn execute_args(
    command: &[&str],
    env: &[&str],
    payload: &[u8],
) -> (String, Vec<String>, Vec<String>, AbiBytes) {
    (
        "python".to_string(),
        command.iter().map(|s| s.to_string()).collect(),
        env.iter().map(|s| s.to_string()).collect(),
        payload.to_vec().into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_end_to_end_through_the_blueprint_runner() {
    jobs_end_to_end(Executor::Native).await
}

/// The same jobs with every function in a microVM (QEMU; TCG here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_end_to_end_through_the_blueprint_runner_in_microvms() {
    jobs_end_to_end(Executor::Microvm).await
}

async fn jobs_end_to_end(executor: Executor) {
    if !require(executor, "jobs_run_end_to_end_through_the_blueprint_runner") {
        return;
    }
    let mut h = Harness::start(executor).await;

    // Job 0: stdin upper-cased by python3 in the sandbox, env var passed through.
    let upper = [
        "python3",
        "-c",
        "import os, sys; sys.stdout.write(os.environ['PREFIX'] + sys.stdin.read().upper())",
    ];
    let args = execute_args(&upper, &["PREFIX=>"], b"hello blueprint");
    let out = ok_body(h.call(EXECUTE_FUNCTION, args.abi_encode()).await);
    let stdout = <AbiBytes as SolValue>::abi_decode(&out).expect("ABI bytes");
    assert_eq!(&stdout[..], b">HELLO BLUEPRINT");
    // Solidity's abi.encode(image, command, env, payload) (no outer offset) decodes too.
    let out = ok_body(h.call(EXECUTE_FUNCTION, args.abi_encode_params()).await);
    let stdout = <AbiBytes as SolValue>::abi_decode(&out).expect("ABI bytes");
    assert_eq!(&stdout[..], b">HELLO BLUEPRINT");

    // Job 0 failing: non-zero exit is a job error with the status and stderr.
    let fail = [
        "python3",
        "-c",
        "import sys; sys.stderr.write('boom on stderr'); sys.exit(3)",
    ];
    let message = err_message(
        h.call(EXECUTE_FUNCTION, execute_args(&fail, &[], b"").abi_encode())
            .await,
    );
    assert!(message.contains("status 3"), "{message}");
    assert!(message.contains("boom on stderr"), "{message}");

    // Job 0 with arguments that are not the ABI tuple: a job error.
    let message = err_message(h.call(EXECUTE_FUNCTION, b"not ABI at all".to_vec()).await);
    assert!(message.contains("decode"), "{message}");
    // An unknown image is refused by the platform: a job error.
    let mut bad_image = execute_args(&upper, &[], b"x");
    bad_image.0 = "cobol".into();
    let message = err_message(h.call(EXECUTE_FUNCTION, bad_image.abi_encode()).await);
    assert!(message.contains("cobol"), "{message}");

    // Job 1: deploy from a FunctionDefinition's JSON; (id, version) back.
    let definition = json!({
        "name": "shout",
        "language": "python",
        "handler": "main.handler",
        "files": {"main.py": "def handler(event, context):\n    if event == b'raise':\n        raise ValueError('refusing to shout')\n    return event.upper()\n"},
    });
    let body = AbiBytes::from(serde_json::to_vec(&definition).unwrap()).abi_encode();
    let out = ok_body(h.call(DEPLOY_FUNCTION, body.clone()).await);
    let (id, version) = <(String, u32)>::abi_decode(&out).expect("ABI (string, uint32)");
    assert!(id.starts_with("fn-"), "{id}");
    assert_eq!(version, 1);
    let out = ok_body(h.call(DEPLOY_FUNCTION, body).await);
    assert_eq!(<(String, u32)>::abi_decode(&out).unwrap(), (id.clone(), 2));

    // Job 1 with bytes that are not a definition, and with an invalid one.
    let junk = AbiBytes::from(b"{not json".to_vec()).abi_encode();
    let message = err_message(h.call(DEPLOY_FUNCTION, junk).await);
    assert!(message.contains("invalid function definition"), "{message}");
    let invalid = json!({"name": "bad", "language": "cobol", "handler": "x", "files": {"x": ""}});
    let invalid = AbiBytes::from(serde_json::to_vec(&invalid).unwrap()).abi_encode();
    let message = err_message(h.call(DEPLOY_FUNCTION, invalid).await);
    assert!(message.contains("cobol"), "{message}");

    // Job 2: invoke by name and by id; the response bytes back.
    for function in ["shout", id.as_str()] {
        let args = (function.to_string(), AbiBytes::from(b"quiet".to_vec()));
        let out = ok_body(h.call(INVOKE_FUNCTION, args.abi_encode()).await);
        let response = <AbiBytes as SolValue>::abi_decode(&out).unwrap();
        assert_eq!(&response[..], b"QUIET");
    }
    // Job 2, the function raising: a job error with its message.
    let args = ("shout".to_string(), AbiBytes::from(b"raise".to_vec()));
    let message = err_message(h.call(INVOKE_FUNCTION, args.abi_encode()).await);
    assert!(message.contains("refusing to shout"), "{message}");
    // Job 2, unknown function: a job error.
    let args = (
        "no-such-function".to_string(),
        AbiBytes::from(b"x".to_vec()),
    );
    let message = err_message(h.call(INVOKE_FUNCTION, args.abi_encode()).await);
    assert!(message.contains("not found"), "{message}");
    // Job 2, malformed arguments: a job error.
    let message = err_message(h.call(INVOKE_FUNCTION, 42_u64.abi_encode()).await);
    assert!(message.contains("decode"), "{message}");

    // The runner survived every failure: a last call still works.
    let args = ("shout".to_string(), AbiBytes::from(b"still here".to_vec()));
    let out = ok_body(h.call(INVOKE_FUNCTION, args.abi_encode()).await);
    assert_eq!(
        &<AbiBytes as SolValue>::abi_decode(&out).unwrap()[..],
        b"STILL HERE"
    );

    h.stop().await;
}
