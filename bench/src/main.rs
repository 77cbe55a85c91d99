//! `faas-bench`: start a real `faas serve` (or use `--server`), then measure and
//! print cold starts, warm latency, throughput and memory per warm instance for
//! Python, Node.js and shell functions.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use faas_tester::{Executor, TestServer};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Benchmark the FaaS platform")]
struct Args {
    /// Cold starts measured per language.
    #[arg(long, default_value_t = 10)]
    cold: usize,
    /// Warm invocations measured per language.
    #[arg(long, default_value_t = 500)]
    warm: usize,
    /// Seconds of the concurrent throughput run per language.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent clients in the throughput run.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Sandbox kind: native, docker, microvm (QEMU), firecracker (needs FAAS_FC_BINARY_PATH).
    #[arg(long, default_value = "native")]
    executor: String,
    /// Serve without API keys (to measure what authentication costs).
    #[arg(long)]
    insecure_no_auth: bool,
    /// Deploy every function with this egress allow-list entry (to measure
    /// what a network link costs a cold start); nothing is ever sent to it.
    #[arg(long, value_name = "DEST")]
    egress: Option<String>,
    /// Deploy every function with this `ephemeral_mb` (to measure what a
    /// disk-backed `/tmp`, above 64 MiB, costs a cold start) [default: the
    /// platform's, 512].
    #[arg(long, value_name = "MB")]
    ephemeral_mb: Option<u32>,
    /// Pre-started instances per runtime (the server's `--prestart`); each
    /// cold start waits until they are all ready again, so it measures a
    /// start from the pool. 0 measures full cold starts.
    #[arg(long, default_value_t = 1)]
    prestart: u32,
}

const FUNCTIONS: &[Function] = &[
    (
        "python",
        "python",
        "main.handler",
        "main.py",
        "def handler(event, context):\n    return event\n",
    ),
    (
        "node",
        "node",
        "index.handler",
        "index.js",
        "exports.handler = async (event) => event;\n",
    ),
    ("shell", "shell", "cat.sh", "cat.sh", "cat\n"),
];

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let executor = match args.executor.as_str() {
        "native" => Executor::Native,
        "docker" => Executor::Docker,
        "microvm" => Executor::Microvm,
        "firecracker" => Executor::Firecracker,
        other => bail!("unknown executor {other}"),
    };
    if let Some(why) = faas_tester::missing_prerequisite(executor) {
        bail!("cannot benchmark: {why}");
    }
    // VMs: idle instances expire after 1 s, so that the restore measurement
    // below gets cold starts of one function without redeploying it.
    let idle = if executor.is_vm() { "1" } else { "300" };
    let prestart = args.prestart.to_string();
    let mut flags = vec![
        "--max-instances",
        "64",
        "--idle-timeout-sec",
        idle,
        "--prestart",
        &prestart,
    ];
    if args.insecure_no_auth {
        flags.push("--insecure-no-auth");
    }
    let server = TestServer::start_with(executor, &flags).await;
    let mut extra = match &args.egress {
        Some(dest) => json!({"network": {"egress": [dest]}}),
        None => json!({}),
    };
    if let Some(mb) = args.ephemeral_mb {
        extra["ephemeral_mb"] = json!(mb);
    }
    println!(
        "# faas-bench: executor {}, {} cores, prestart {}, auth {}, egress {}, ephemeral_mb {}",
        args.executor,
        num_cpus(),
        args.prestart,
        if args.insecure_no_auth { "off" } else { "on" },
        args.egress.as_deref().unwrap_or("none"),
        args.ephemeral_mb
            .map_or("default".to_string(), |mb| mb.to_string()),
    );
    println!(
        "{:<7} {:>5} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>10} | {:>9}",
        "lang",
        "pre",
        "cold p50",
        "cold p90",
        "cold max",
        "start avg",
        "warm p50",
        "warm p99",
        "srv p50",
        "req/s",
        "mem/inst"
    );
    for &function in FUNCTIONS {
        let (label, lang, handler, file, code) = function;
        // The pool holds a spare per runtime (Python, Node.js, shell).
        let spares = if executor == Executor::Native {
            3 * u64::from(args.prestart)
        } else {
            0
        };
        let (cold, prestarted) = cold_starts(&server, function, &extra, args.cold, spares).await?;
        let start = mean_start_ms(&server, &format!("cold-{label}-")).await;
        let name = format!("bench-{label}");
        server
            .deploy(&name, lang, handler, &[(file, code)], extra.clone())
            .await;
        let (warm, server_side) = warm_latency(&server, &name, args.warm).await?;
        let rps = throughput(
            &server,
            &name,
            args.concurrency,
            Duration::from_secs(args.seconds),
        )
        .await?;
        let rss = if executor.is_vm() {
            vmm_memory(&server)
        } else {
            instance_memory(&server).await
        };
        // "srv p50": median time inside the server for a warm call (pool, agent
        // round trip, bootstrap dispatch, a trivial handler), without HTTP.
        println!(
            "{:<7} {:>5} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms | {:>7.3}ms {:>7.3}ms {:>7.3}ms | {:>10.0} | {:>7.1}MB",
            label,
            format!("{prestarted}/{}", cold.len()),
            pct(&cold, 50.0),
            pct(&cold, 90.0),
            pct(&cold, 100.0),
            start,
            pct(&warm, 50.0),
            pct(&warm, 99.0),
            pct(&server_side, 50.0),
            rps,
            rss
        );
        server.delete(&format!("/functions/{name}")).await;
    }
    if executor.is_vm() {
        // "start avg" above is a VM's boot to ready (kernel, agent, handler
        // loaded) plus saving it; here, starts of the same function from that state.
        println!(
            "{:<7} {:>13} {:>13} {:>17}",
            "lang", "restore p50", "restore max", "restore start avg"
        );
        for &(label, lang, handler, file, code) in FUNCTIONS {
            let (rtt, start) =
                restores(&server, label, lang, handler, file, code, args.cold).await?;
            println!(
                "{:<7} {:>11.1}ms {:>11.1}ms {:>15.1}ms",
                label,
                pct(&rtt, 50.0),
                pct(&rtt, 100.0),
                start
            );
        }
    }
    drop(server);
    Ok(())
}

/// Cold starts of one function after its first: each waits for the idle instance
/// to expire, so the next call starts a new one (a restore, for microVMs).
/// Client round trips, and the server's mean start time of those instances, ms.
async fn restores(
    s: &TestServer,
    label: &str,
    lang: &str,
    handler: &str,
    file: &str,
    code: &str,
    n: usize,
) -> Result<(Vec<f64>, f64)> {
    let name = format!("restore-{label}");
    s.deploy(&name, lang, handler, &[(file, code)], json!({}))
        .await;
    let first = s.invoke(&name, b"{}").await;
    if first.status != 200 {
        bail!("first invoke of {name} failed: {}", first.text());
    }
    let exact = format!("{name}\"");
    let (sum0, count0) = start_stats(s, &exact).await;
    let mut rtt = Vec::with_capacity(n);
    for _ in 0..n {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, st) = s.get(&format!("/functions/{name}/status")).await;
            if st["warm_instances"] == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("the idle instance of {name} did not expire");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let t = Instant::now();
        let r = s.invoke(&name, b"{}").await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if r.status != 200 || !r.cold_start {
            bail!("cold invoke of {name} failed: {} {}", r.status, r.text());
        }
        rtt.push(ms);
    }
    let (sum, count) = start_stats(s, &exact).await;
    s.delete(&format!("/functions/{name}")).await;
    let start = if count > count0 {
        (sum - sum0) / (count - count0) * 1000.0
    } else {
        f64::NAN
    };
    Ok((rtt, start))
}

/// Sum (s) and count of `cold_start_duration_seconds` over the functions whose
/// name starts with `prefix` (end it with `"` for one function exactly).
async fn start_stats(s: &TestServer, prefix: &str) -> (f64, f64) {
    let text = match s.http().get(format!("{}/metrics", s.url)).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return (0.0, 0.0),
    };
    let selector = format!("function=\"{prefix}");
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines().filter(|l| l.contains(&selector)) {
        let Some((metric, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if metric.contains("cold_start_duration_seconds_sum") {
            sum += value;
        } else if metric.contains("cold_start_duration_seconds_count") {
            count += value;
        }
    }
    (sum, count)
}

/// Mean instance start (sandbox start and handler load, without the call) of the
/// functions named `prefix*`, ms.
async fn mean_start_ms(s: &TestServer, prefix: &str) -> f64 {
    let (sum, count) = start_stats(s, prefix).await;
    if count == 0.0 {
        f64::NAN
    } else {
        sum / count * 1000.0
    }
}

/// One benchmark function: label, language, handler, file name, source.
type Function = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

async fn cold_starts(
    s: &TestServer,
    function: Function,
    extra: &serde_json::Value,
    n: usize,
    spares: u64,
) -> Result<(Vec<f64>, usize)> {
    let (label, lang, handler, file, code) = function;
    let mut out = Vec::with_capacity(n);
    let mut prestarted = 0;
    for i in 0..n {
        let name = format!("cold-{label}-{i}");
        if spares > 0 && !s.wait_for_spares(spares, Duration::from_secs(30)).await {
            bail!("the pre-started pool did not refill to {spares} within 30 s");
        }
        s.deploy(&name, lang, handler, &[(file, code)], extra.clone())
            .await;
        let t = Instant::now();
        let r = s.invoke(&name, b"{}").await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if r.status != 200 || !r.cold_start {
            bail!("cold invoke of {name} failed: {} {}", r.status, r.text());
        }
        out.push(ms);
        prestarted += usize::from(r.prestarted);
        s.delete(&format!("/functions/{name}")).await;
    }
    Ok((out, prestarted))
}

/// Client round trip and server-side duration of sequential warm invocations, ms.
async fn warm_latency(s: &TestServer, name: &str, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let client = s.http();
    let url = format!("{}/functions/{name}/invoke", s.url);
    // Warm up: start the instance and the connection pool.
    for _ in 0..20 {
        client
            .post(&url)
            .body("{\"x\":1}")
            .send()
            .await?
            .bytes()
            .await?;
    }
    let mut rtt = Vec::with_capacity(n);
    let mut server = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client.post(&url).body("{\"x\":1}").send().await?;
        let ms: f64 = r
            .headers()
            .get("x-faas-duration-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .context("no duration header")?;
        if r.headers()
            .get("x-faas-cold-start")
            .is_some_and(|v| v == "true")
        {
            bail!("warm run hit a cold start");
        }
        r.bytes().await?;
        rtt.push(t.elapsed().as_secs_f64() * 1000.0);
        server.push(ms);
    }
    Ok((rtt, server))
}

async fn throughput(s: &TestServer, name: &str, concurrency: usize, dur: Duration) -> Result<f64> {
    let url = format!("{}/functions/{name}/invoke", s.url);
    let deadline = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let url = url.clone();
        let client = s.http();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let r = client.post(&url).body("{\"x\":1}").send().await?;
                if !r.status().is_success() {
                    bail!("throughput invoke failed: {}", r.status());
                }
                r.bytes().await?;
                n += 1;
            }
            Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / dur.as_secs_f64())
}

/// Mean memory charged to each live instance's cgroup (memory.usage_in_bytes), MB.
async fn instance_memory(s: &TestServer) -> f64 {
    let parent = s.cgroup_parent();
    let dir = std::path::Path::new("/sys/fs/cgroup/memory").join(parent);
    let mut sizes = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten().filter(|e| e.path().is_dir()) {
            let usage =
                std::fs::read_to_string(e.path().join("memory.usage_in_bytes")).unwrap_or_default();
            if let Ok(b) = usage.trim().parse::<f64>() {
                sizes.push(b / 1_048_576.0);
            }
        }
    }
    if sizes.is_empty() {
        return f64::NAN;
    }
    sizes.iter().sum::<f64>() / sizes.len() as f64
}

/// Mean resident memory of each live VMM (QEMU or Firecracker) of this server, MB:
/// what a warm microVM costs the host, guest kernel and page cache included.
fn vmm_memory(s: &TestServer) -> f64 {
    let mut sizes = Vec::new();
    for pid in faas_tester::vmm_pids(s.data_dir()) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
        if let Some(kb) = kb {
            sizes.push(kb / 1024.0);
        }
    }
    if sizes.is_empty() {
        return f64::NAN;
    }
    sizes.iter().sum::<f64>() / sizes.len() as f64
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
