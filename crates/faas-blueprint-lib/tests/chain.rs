//! Jobs 0-2 on a real chain: `scripts/chain up` (Anvil 1.7.1 with the Tangle v2
//! contracts, our blueprint, an operator, a service, `faas-bin` on the native
//! sandbox), jobs submitted with `submitJob` through the Tangle contract and their
//! results read from `JobResultSubmitted`, a failing job, `faas-bin` killed and
//! restarted (calls submitted meanwhile are run, answered ones not again), then
//! `scripts/chain down` and a check that nothing is left.
//!
//! The chain is driven with the `cast` that `scripts/chain` downloads, as an
//! operator following `docs/blueprint.md` ("Local chain") would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alloy_primitives::{hex, keccak256, Bytes as AbiBytes};
use alloy_sol_types::SolValue;
use faas_tester::{bin_dir, images_dir, require, require_tools, Executor};
use serde_json::{json, Value};

const TEST: &str = "jobs_run_through_the_tangle_contract_on_a_local_chain";

/// `scripts/chain up` downloads (first run) and starts everything; images are
/// already built by the suite, so this is mostly the download.
const UP_TIMEOUT: Duration = Duration::from_secs(600);
/// A job's result event, once submitted: the producer polls every 2 s.
const RESULT_TIMEOUT: Duration = Duration::from_secs(90);

/// One `scripts/chain` deployment on its own state directory and ports.
struct Chain {
    dir: tempfile::TempDir,
    state: PathBuf,
    port: u16,
    faas_addr: String,
    cgroup_parent: String,
    info: Value,
    down: bool,
}

impl Chain {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/chain")
    }

    fn cache() -> PathBuf {
        std::env::var_os("FAAS_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/faas"))
            .join("chain")
    }

    fn up() -> Chain {
        let dir = tempfile::Builder::new()
            .prefix("faas-chain-test-")
            .tempdir()
            .expect("temp dir");
        // The platform writes code trees beneath it as an unprivileged uid.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod temp dir");
        let state = dir.path().join("state");
        let faas_port = free_port();
        let mut chain = Chain {
            state,
            port: free_port(),
            faas_addr: format!("127.0.0.1:{faas_port}"),
            cgroup_parent: format!(
                "faas-chain-test-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            info: Value::Null,
            down: false,
            dir,
        };
        let out = chain.run_script("up", UP_TIMEOUT);
        let last = out.lines().last().unwrap_or_default();
        chain.info = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("last line of `chain up` is not JSON ({e}): {out}"));
        chain
    }

    /// Runs `scripts/chain <verb>`, bounded; its stdout, or a panic with both streams.
    fn run_script(&self, verb: &str, timeout: Duration) -> String {
        self.try_script(verb, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `scripts/chain <verb>`, bounded; its stdout, or what went wrong.
    fn try_script(&self, verb: &str, timeout: Duration) -> Result<String, String> {
        let out_path = self.dir.path().join(format!("{verb}.out"));
        let err_path = self.dir.path().join(format!("{verb}.err"));
        let mut child = Command::new("bash")
            .arg(Self::script())
            .arg(verb)
            .env("FAAS_CHAIN_STATE", &self.state)
            .env("FAAS_CHAIN_PORT", self.port.to_string())
            .env("FAAS_CHAIN_ADDR", &self.faas_addr)
            .env("FAAS_BIN_DIR", bin_dir())
            .env("FAAS_IMAGES_DIR", images_dir())
            .env("FAAS_CGROUP_PARENT", &self.cgroup_parent)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            .spawn()
            .expect("run scripts/chain");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for scripts/chain") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        match status {
            Some(s) if s.success() => Ok(stdout),
            Some(s) => Err(format!(
                "`chain {verb}` failed ({s}):\n{stderr}\n{stdout}\n{}",
                self.faas_log()
            )),
            None => Err(format!(
                "`chain {verb}` did not finish within {}s:\n{stderr}\n{stdout}",
                timeout.as_secs()
            )),
        }
    }

    fn faas_log(&self) -> String {
        let log = std::fs::read(self.state.join("faas-bin.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- faas-bin.log (end) ---\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    fn rpc(&self) -> String {
        self.info["http_rpc_url"]
            .as_str()
            .expect("http_rpc_url")
            .to_string()
    }

    fn tangle(&self) -> String {
        self.info["tangle_contract"]
            .as_str()
            .expect("tangle_contract")
            .to_string()
    }

    fn service_id(&self) -> u64 {
        self.info["service_id"].as_u64().expect("service_id")
    }

    /// `cast <args>`, bounded by cast's own RPC timeout; its stdout.
    fn cast(&self, args: &[&str]) -> String {
        let out = Command::new(Self::cache().join("bin/cast"))
            .args(args)
            .args(["--rpc-url", &self.rpc()])
            .output()
            .expect("run cast");
        assert!(
            out.status.success(),
            "cast {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `submitJob(service, job, inputs)` from the caller's key; the call id.
    fn submit(&self, job: u8, inputs: &[u8]) -> u64 {
        let key = self.info["caller_private_key"]
            .as_str()
            .expect("caller key");
        let receipt = self.cast(&[
            "send",
            "--json",
            "--timeout",
            "60",
            "--private-key",
            key,
            &self.tangle(),
            "submitJob(uint64,uint8,bytes)",
            &self.service_id().to_string(),
            &job.to_string(),
            &format!("0x{}", hex::encode(inputs)),
        ]);
        let receipt: Value = serde_json::from_str(&receipt).expect("receipt JSON");
        assert_eq!(receipt["status"], "0x1", "submitJob reverted: {receipt}");
        let topic = format!(
            "{}",
            keccak256("JobSubmitted(uint64,uint64,uint8,address,bytes)")
        );
        let log = receipt["logs"]
            .as_array()
            .expect("logs")
            .iter()
            .find(|l| l["topics"][0].as_str() == Some(topic.as_str()))
            .unwrap_or_else(|| panic!("no JobSubmitted in {receipt}"));
        topic_u64(&log["topics"][2])
    }

    /// The `result` of every `JobResultSubmitted` of our service, by call id.
    fn results(&self) -> Vec<(u64, Vec<u8>)> {
        let logs = self.cast(&[
            "logs",
            "--json",
            "--from-block",
            "1",
            "--address",
            &self.tangle(),
            "JobResultSubmitted(uint64 indexed,uint64 indexed,address indexed,bytes)",
        ]);
        let logs: Value = serde_json::from_str(&logs).expect("logs JSON");
        logs.as_array()
            .expect("logs array")
            .iter()
            .filter(|l| topic_u64(&l["topics"][1]) == self.service_id())
            .map(|l| {
                let data = hex::decode(l["data"].as_str().expect("data")).expect("hex data");
                let result = <AbiBytes as SolValue>::abi_decode(&data).expect("event's bytes");
                (topic_u64(&l["topics"][2]), result.to_vec())
            })
            .collect()
    }

    fn result_of(&self, call_id: u64) -> Option<Vec<u8>> {
        self.results()
            .into_iter()
            .find(|(id, _)| *id == call_id)
            .map(|(_, r)| r)
    }

    /// Waits for the result of `call_id`.
    fn wait_result(&self, call_id: u64) -> Vec<u8> {
        let deadline = Instant::now() + RESULT_TIMEOUT;
        loop {
            if let Some(r) = self.result_of(call_id) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no JobResultSubmitted for call {call_id} within {}s\n{}",
                RESULT_TIMEOUT.as_secs(),
                self.faas_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Submits and waits; the result and the round trip (submit to event).
    fn roundtrip(&self, job: u8, inputs: &[u8]) -> (Vec<u8>, Duration) {
        let start = Instant::now();
        let call = self.submit(job, inputs);
        let result = self.wait_result(call);
        (result, start.elapsed())
    }

    /// Pid of the running faas-bin (first field of the script's pid file).
    fn faas_pid(&self) -> u32 {
        let file = std::fs::read_to_string(self.state.join("faas-bin.pid")).expect("pid file");
        file.split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("pid")
    }

    fn down(&mut self) -> String {
        self.down = true;
        self.run_script("down", Duration::from_secs(180))
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        if !self.down {
            // A failed assertion: still stop everything.
            let _ = Command::new("bash")
                .arg(Self::script())
                .arg("down")
                .env("FAAS_CHAIN_STATE", &self.state)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn topic_u64(topic: &Value) -> u64 {
    let hex = topic.as_str().expect("topic");
    u64::from_str_radix(&hex[hex.len() - 16..], 16).expect("u64 topic")
}

fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // A zombie has exited.
    stat.rsplit(") ").next().and_then(|s| s.split(' ').next()) != Some("Z")
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Job 0's arguments: `(image, command, env_vars, payload)`.
fn execute(image: &str, command: &[&str], payload: &[u8]) -> Vec<u8> {
    (
        image.to_string(),
        command.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        Vec::<String>::new(),
        AbiBytes::copy_from_slice(payload),
    )
        .abi_encode_params()
}

fn stdout_of(result: &[u8]) -> String {
    let bytes = <AbiBytes as SolValue>::abi_decode(result).expect("ABI bytes");
    String::from_utf8_lossy(&bytes).into_owned()
}

fn millis(d: &[Duration]) -> String {
    let ms: Vec<String> = d.iter().map(|d| d.as_millis().to_string()).collect();
    ms.join(", ")
}

#[test]
fn jobs_run_through_the_tangle_contract_on_a_local_chain() {
    if !require(Executor::Native, TEST) {
        return;
    }
    if !require_tools(TEST, &["curl", "tar", "sha256sum", "setsid", "awk", "bash"]) {
        return;
    }
    for bin in ["faas-bin", "faas-chain-setup"] {
        if !bin_dir().join(bin).is_file() {
            let why = format!(
                "{bin} not built in {} (cargo build -p faas-bin)",
                bin_dir().display()
            );
            if std::env::var_os("CI").is_some() {
                panic!("{TEST}: prerequisite missing under CI: {why}");
            }
            eprintln!("\n!!!!!!!! SKIPPED {TEST}: {why} !!!!!!!!\n");
            return;
        }
    }

    let started = Instant::now();
    let mut chain = Chain::up();
    eprintln!(
        "chain up in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        chain.info
    );
    for key in [
        "http_rpc_url",
        "ws_rpc_url",
        "tangle_contract",
        "blueprint_id",
        "service_id",
        "caller_private_key",
        "faas_url",
    ] {
        assert!(!chain.info[key].is_null(), "{key} missing: {}", chain.info);
    }
    // Our own blueprint and service, not the snapshot's blueprint 0.
    assert!(
        chain.info["blueprint_id"].as_u64() > Some(0),
        "{}",
        chain.info
    );
    let faas_url = chain.info["faas_url"].as_str().unwrap().to_string();
    let health = Command::new("curl")
        .args(["-fsS", &format!("{faas_url}/healthz")])
        .output()
        .expect("curl");
    assert!(
        health.status.success(),
        "gateway at {faas_url} does not answer"
    );

    // Job 0: a command's stdout. Measured a few times (docs/benchmarks.md).
    let mut trips = Vec::new();
    for i in 0..5 {
        let payload = format!("hello chain {i}");
        let (result, took) = chain.roundtrip(
            0,
            &execute("shell", &["tr", "a-z", "A-Z"], payload.as_bytes()),
        );
        assert_eq!(stdout_of(&result), payload.to_uppercase());
        trips.push(took);
    }
    eprintln!(
        "round trip, job 0 (submitJob to JobResultSubmitted), ms: {}",
        millis(&trips)
    );

    // Job 1: deploy; (id, version) back.
    let definition = json!({
        "name": "adder",
        "language": "python",
        "handler": "main.handler",
        "files": {"main.py": "import json\n\ndef handler(event, context):\n    data = event if isinstance(event, dict) else json.loads(event)\n    return {'sum': sum(data['numbers'])}\n"},
    });
    let body = AbiBytes::from(serde_json::to_vec(&definition).unwrap()).abi_encode();
    let (result, took) = chain.roundtrip(1, &body);
    let (id, version) = <(String, u32)>::abi_decode(&result).expect("ABI (string, uint32)");
    assert!(id.starts_with("fn-"), "{id}");
    assert_eq!(version, 1);
    eprintln!("round trip, job 1 (deploy): {} ms", took.as_millis());

    // Job 2: invoke it by name; its response body back.
    let mut invokes = Vec::new();
    for _ in 0..3 {
        let args = (
            "adder".to_string(),
            AbiBytes::from_static(br#"{"numbers": [1, 2, 3]}"#),
        )
            .abi_encode_params();
        let (result, took) = chain.roundtrip(2, &args);
        let body: Value =
            serde_json::from_str(&stdout_of(&result)).expect("the function's JSON body");
        assert_eq!(body, json!({"sum": 6}));
        invokes.push(took);
    }
    eprintln!(
        "round trip, job 2 (invoke, first cold), ms: {}",
        millis(&invokes)
    );

    // A failing job is a job error: the SDK's TangleConsumer submits nothing for
    // it (and logs it only at trace level), so the call never gets a
    // JobResultSubmitted and stays open on chain; the runner goes on (the job
    // after it is answered) and faas-bin's own warning says why.
    let failing = chain.submit(
        0,
        &execute("shell", &["sh", "-c", "echo boom >&2; exit 3"], b""),
    );
    let after = chain.submit(0, &execute("shell", &["tr", "a-z", "A-Z"], b"after"));
    assert_eq!(stdout_of(&chain.wait_result(after)), "AFTER");
    assert_eq!(chain.result_of(failing), None, "a failed job got a result");
    let pid = chain.faas_pid();
    assert!(
        alive(pid),
        "faas-bin stopped after a failing job\n{}",
        chain.faas_log()
    );
    let log = chain.faas_log();
    assert!(
        log.contains("job failed: no result is submitted") && log.contains("status 3"),
        "the job error is not logged\n{log}"
    );
    // On chain: no result counted, not completed. Types.JobCall is (jobIndex,
    // caller, createdAt, resultCount, completed, isRFQ, payment).
    let call = chain.cast(&[
        "call",
        &chain.tangle(),
        "getJobCall(uint64,uint64)((uint8,address,uint64,uint32,bool,bool,uint256))",
        &chain.service_id().to_string(),
        &failing.to_string(),
    ]);
    let fields: Vec<&str> = call
        .trim_matches(|c| c == '(' || c == ')')
        .split(", ")
        .collect();
    assert_eq!(
        fields.get(3..5),
        Some(&["0", "false"][..]),
        "job call: {call}"
    );

    // faas-bin killed mid-stream. Calls submitted while it is down are run after
    // the restart, also those more than 10 blocks back (the SDK's producer alone
    // would start at the newest 10 blocks): faas-bin resumes from the block of the
    // last call it got.
    nix_kill(pid);
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "faas-bin survived SIGKILL"
    );
    let older = chain.submit(0, &execute("shell", &["tr", "a-z", "A-Z"], b"older"));
    chain.cast(&["rpc", "anvil_mine", "10"]);
    let newer = chain.submit(0, &execute("shell", &["tr", "a-z", "A-Z"], b"newer"));
    let restarted = Instant::now();
    chain.run_script("restart", UP_TIMEOUT);
    assert_eq!(stdout_of(&chain.wait_result(newer)), "NEWER");
    assert_eq!(stdout_of(&chain.wait_result(older)), "OLDER");
    eprintln!(
        "restart to both results: {} ms",
        restarted.elapsed().as_millis()
    );
    let log = chain.faas_log();
    assert!(log.contains("resuming service"), "{log}");

    // Restarted again while answered calls are in the blocks it resumes from:
    // handed out again by the producer, they are skipped (a second result would
    // revert and stop the runner), and faas-bin goes on.
    chain.run_script("restart", UP_TIMEOUT);
    let next = chain.submit(0, &execute("shell", &["tr", "a-z", "A-Z"], b"next"));
    assert_eq!(stdout_of(&chain.wait_result(next)), "NEXT");
    let pid = chain.faas_pid();
    assert!(alive(pid), "faas-bin stopped\n{}", chain.faas_log());
    let log = chain.faas_log();
    assert!(log.contains("already answered on chain"), "{log}");
    let results = chain.results();
    for call in [older, newer, next] {
        let n = results.iter().filter(|(id, _)| *id == call).count();
        assert_eq!(n, 1, "call {call} has {n} results");
    }

    // Down: nothing left.
    let anvil_pid: u32 = std::fs::read_to_string(chain.state.join("anvil.pid"))
        .expect("anvil pid file")
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("anvil pid");
    chain.down();
    assert!(!alive(anvil_pid), "anvil still runs after `chain down`");
    assert!(!alive(pid), "faas-bin still runs after `chain down`");
    assert!(
        !chain.state.exists(),
        "state dir left: {}",
        chain.state.display()
    );
    let state = chain.state.to_string_lossy().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&state)).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    let mut cgroups = Vec::new();
    for root in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for dir in [root.path(), PathBuf::from("/sys/fs/cgroup")] {
            let parent = dir.join(&chain.cgroup_parent);
            for child in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                if child.path().is_dir() {
                    cgroups.push(child.path().display().to_string());
                }
            }
        }
    }
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| {
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let ours = cmdline.contains(&state)
                || (cmdline.contains("anvil")
                    && cmdline.contains(&format!("--port {}", chain.port)));
            ours.then_some(cmdline)
        })
        .collect();
    assert!(procs.is_empty(), "processes left: {procs:?}");
}

fn nix_kill(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -KILL {pid}");
}
