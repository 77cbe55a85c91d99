//! The microVM sandbox through the executor API, under QEMU `microvm` (TCG on
//! machines whose KVM is paravirtual, such as ours): the real guest kernel,
//! initramfs and Python root disk, the guest agent as init on vsock, and the
//! faults a VM can suffer. Needs root, qemu-system-x86_64, vhost-device-vsock,
//! mke2fs, apt-get (kernel download) and the built guest agent; a missing one
//! is a loud SKIPPED line, or a failure when `CI` is set.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use faas_common::protocol::InitSpec;
use faas_common::Language;
use faas_executor::microvm::{
    find_binary, reseed_guest, GuestImages, MicrovmConfig, MicrovmSandbox, QemuConfig, Vmm,
};
use faas_executor::{ExecutorError, InstanceSpec, Sandbox};
use faas_images::ImageStore;
use faas_tester::vhost_vsock;
use tokio::sync::OnceCell;

fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for (bin, hint) in [
        ("qemu-system-x86_64", "apt-get install qemu-system-x86"),
        ("mke2fs", "apt-get install e2fsprogs"),
        ("apt-get", "a Debian host"),
    ] {
        if find_binary(Path::new(bin)).is_none() {
            return Some(format!("{bin} is not installed ({hint})"));
        }
    }
    if vhost_vsock().is_none() {
        return Some(
            "vhost-device-vsock is not installed (cargo install vhost-device-vsock)".into(),
        );
    }
    let agent = faas_tester::bin_dir().join("faas-guest-agent");
    if !agent.is_file() {
        return Some(format!(
            "{} not built (cargo build -p faas-guest-agent)",
            agent.display()
        ));
    }
    None
}

/// Skip loudly, or fail under CI.
/// One VM at a time: under TCG two cores boot one guest in seconds, several at
/// once in tens of seconds, and a starved vhost-device-vsock stops answering.
static ONE_VM_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn skipped(test: &str) -> bool {
    let Some(why) = missing() else {
        return false;
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: prerequisite missing under CI: {why}");
    }
    let line = format!("\n!!!!!!!! SKIPPED {test} [microvm]: {why} !!!!!!!!\n\n");
    std::io::stderr().write_all(line.as_bytes()).unwrap();
    true
}

/// Guest kernel + Python disk, built once per test binary (cached on disk across runs).
async fn images() -> &'static GuestImages {
    static IMAGES: OnceCell<GuestImages> = OnceCell::const_new();
    IMAGES
        .get_or_init(|| async {
            let store = ImageStore::new(faas_tester::images_dir());
            let progress = |l: &str| eprintln!("[images] {l}");
            let agent = faas_tester::bin_dir().join("faas-guest-agent");
            let python = store
                .ensure(Language::Python, &agent, false, &progress)
                .await
                .expect("python runtime image");
            let kernel = store
                .ensure_guest_kernel(false, &progress)
                .await
                .expect("guest kernel");
            let disk = store
                .ensure_guest_disk(&python, false, &progress)
                .await
                .expect("python root disk");
            GuestImages {
                kernel: kernel.vmlinux,
                initramfs: Some(kernel.initramfs),
                disks: HashMap::from([(Language::Python, disk.path)]),
            }
        })
        .await
}

struct Fixture {
    sandbox: MicrovmSandbox,
    run_dir: PathBuf,
    code: tempfile::TempDir,
    _tmp: tempfile::TempDir,
}

/// A QEMU sandbox: on hybrid vsock through vhost-device-vsock (`snapshots`
/// false), or on virtio-serial with snapshots.
async fn fixture_with(handler_source: &str, snapshots: bool) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let config = MicrovmConfig {
        vmm: Vmm::Qemu(QemuConfig {
            vhost_vsock: vhost_vsock().unwrap(),
            snapshots,
            ..QemuConfig::default()
        }),
        run_dir: run_dir.clone(),
        disk_cache: tmp.path().join("disks"),
        snapshot_dir: tmp.path().join("snapshots"),
        start_timeout: Duration::from_secs(90),
        ..MicrovmConfig::default()
    };
    let sandbox = MicrovmSandbox::new(config, images().await.clone())
        .await
        .unwrap();
    let code = tempfile::tempdir().unwrap();
    std::fs::write(code.path().join("main.py"), handler_source).unwrap();
    Fixture {
        sandbox,
        run_dir,
        code,
        _tmp: tmp,
    }
}

async fn fixture(handler_source: &str) -> Fixture {
    fixture_with(handler_source, false).await
}

fn spec(code: &Path, memory_mb: u32) -> InstanceSpec {
    InstanceSpec {
        language: Language::Python,
        code_dir: Some(code.to_path_buf()),
        deps_dir: None,
        memory_mb,
        ephemeral_mb: faas_common::contract::TMPFS_MAX_MB,
        init: Some(InitSpec {
            language: Language::Python,
            handler: "main.handler".into(),
            code_dir: "/var/task".into(),
            deps_dir: None,
            function_name: "vm-test".into(),
            function_version: 1,
            memory_mb,
            env: BTreeMap::new(),
        }),
        egress: Vec::new(),
    }
}

/// Processes whose command line names `dir` (our VMMs and vsock helpers).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle).then_some(cmd)
        })
        .collect()
}

fn assert_nothing_left(run_dir: &Path) {
    let procs = processes_under(run_dir);
    assert!(procs.is_empty(), "processes left behind: {procs:#?}");
    let left: Vec<_> = std::fs::read_dir(run_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "VM directories left behind: {left:?}");
}

fn report(line: &str) {
    std::io::stderr()
        .write_all(format!("[microvm] {line}\n").as_bytes())
        .unwrap();
}

const HANDLER: &str = r#"
import os, socket

def handler(event, context):
    try:
        open("/etc/faas-write-test", "w")
        root_writable = True
    except OSError:
        root_writable = False
    try:
        socket.create_connection(("1.1.1.1", 80), timeout=1)
        network = True
    except OSError:
        network = False
    with open("/proc/self/status") as f:
        caps = [l.split()[1] for l in f if l.startswith("CapEff")][0]
    return {
        "echo": event,
        "uid": os.getuid(),
        "gid": os.getgid(),
        "caps": caps,
        "hostname": socket.gethostname(),
        "root_writable": root_writable,
        "network": network,
        "random": os.urandom(8).hex(),
    }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_function_in_a_qemu_microvm() {
    if skipped("python_function_in_a_qemu_microvm") {
        return;
    }
    let _serial = ONE_VM_AT_A_TIME.lock().await;
    let f = fixture(HANDLER).await;
    let started = Instant::now();
    let mut instance = f.sandbox.start(spec(f.code.path(), 128)).await.unwrap();
    report(&format!(
        "boot + handler load (cold start): {:?}",
        started.elapsed()
    ));

    let out = instance
        .invoke("r1", br#"{"n": 1}"#.to_vec(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(out.error, None, "logs: {}", out.logs);
    let v: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(v["echo"], serde_json::json!({"n": 1}));
    assert_eq!(v["uid"], 1000, "function runs as uid 1000");
    assert_eq!(v["gid"], 1000);
    assert_eq!(v["caps"], "0000000000000000", "no capabilities");
    assert_eq!(v["hostname"], "faas");
    assert_eq!(v["root_writable"], false, "read-only root");
    assert_eq!(v["network"], false, "no network");

    let mut warm = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        let out = instance
            .invoke(&format!("w{i}"), b"{}".to_vec(), Duration::from_secs(30))
            .await
            .unwrap();
        warm.push(t.elapsed());
        assert_eq!(out.error, None);
    }
    warm.sort();
    report(&format!(
        "warm invoke: p50 {:?}, max {:?}",
        warm[warm.len() / 2],
        warm[warm.len() - 1]
    ));

    // The control port answers a reseed (what a restored clone gets).
    let uds = f.run_dir.join(instance.id()).join("vsock.sock");
    reseed_guest(&uds).await.unwrap();
    let after = instance
        .invoke("r2", b"{}".to_vec(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(after.error, None);

    instance.destroy().await;
    assert_nothing_left(&f.run_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_vmm_mid_invocation_is_a_crash_and_the_next_start_works() {
    if skipped("killing_the_vmm_mid_invocation_is_a_crash_and_the_next_start_works") {
        return;
    }
    let _serial = ONE_VM_AT_A_TIME.lock().await;
    let f = fixture("import time\n\ndef handler(event, context):\n    if event == 'sleep':\n        time.sleep(60)\n    return 'ok'\n").await;
    let mut instance = f.sandbox.start(spec(f.code.path(), 128)).await.unwrap();
    let pids = std::fs::read_to_string(f.run_dir.join(instance.id()).join("pids")).unwrap();
    let vmm: i32 = pids.lines().next().unwrap().parse().unwrap();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // SAFETY: kill(2) of the VMM this test started.
        unsafe { libc::kill(vmm, libc::SIGKILL) };
    });
    let t = Instant::now();
    let err = instance
        .invoke("r1", br#""sleep""#.to_vec(), Duration::from_secs(50))
        .await
        .unwrap_err();
    killer.await.unwrap();
    assert!(
        matches!(&err, ExecutorError::Crashed { .. }),
        "expected a crash, got {err:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "noticed the dead VMM promptly"
    );
    assert!(err.to_string().contains("VMM exited"), "{err}");
    instance.destroy().await;
    assert_nothing_left(&f.run_dir);

    let mut next = f.sandbox.start(spec(f.code.path(), 128)).await.unwrap();
    let out = next
        .invoke("r2", br#""fast""#.to_vec(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(out.body, br#""ok""#);
    next.destroy().await;
    assert_nothing_left(&f.run_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_the_function_not_the_vm() {
    if skipped("memory_limit_kills_the_function_not_the_vm") {
        return;
    }
    let _serial = ONE_VM_AT_A_TIME.lock().await;
    // Filled chunks, so the pages are really touched (one huge allocation
    // fails with MemoryError under the guest's overcommit heuristics instead).
    let f = fixture(
        "def handler(event, context):\n    chunks = [b'x' * (1024 * 1024) for _ in range(event)]\n    return len(chunks)\n",
    )
    .await;
    let mut instance = f.sandbox.start(spec(f.code.path(), 64)).await.unwrap();
    let small = instance
        .invoke("r1", b"8".to_vec(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(small.body, b"8");
    let err = instance
        .invoke("r2", b"150".to_vec(), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExecutorError::OutOfMemory { limit_mb: 64, .. }),
        "expected OOM, got {err:?}"
    );
    instance.destroy().await;
    assert_nothing_left(&f.run_dir);
}

const LOADED_STATE: &str = r#"
import os, time
SEED = os.urandom(8).hex()
CALLS = [0]

def handler(event, context):
    CALLS[0] += 1
    return {"calls": CALLS[0], "loaded_seed": SEED, "fresh": os.urandom(8).hex(), "now": time.time()}
"#;

async fn call(instance: &mut Box<dyn faas_executor::Instance>, id: &str) -> serde_json::Value {
    let out = instance
        .invoke(id, b"{}".to_vec(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(out.error, None, "logs: {}", out.logs);
    serde_json::from_slice(&out.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_the_loaded_handler_with_fresh_randomness() {
    if skipped("a_snapshot_restores_the_loaded_handler_with_fresh_randomness") {
        return;
    }
    let _serial = ONE_VM_AT_A_TIME.lock().await;
    let f = fixture_with(LOADED_STATE, true).await;
    let snapshots = f._tmp.path().join("snapshots");

    let t = Instant::now();
    let mut first = f.sandbox.start(spec(f.code.path(), 128)).await.unwrap();
    let boot = t.elapsed();
    let saved: Vec<_> = std::fs::read_dir(&snapshots).unwrap().flatten().collect();
    assert_eq!(saved.len(), 1, "the first VM was saved once loaded");
    let a1 = call(&mut first, "a1").await;
    let a2 = call(&mut first, "a2").await;
    assert_eq!(
        (a1["calls"].as_u64(), a2["calls"].as_u64()),
        (Some(1), Some(2))
    );

    let t = Instant::now();
    let mut second = f.sandbox.start(spec(f.code.path(), 128)).await.unwrap();
    let restore = t.elapsed();
    let mut third = f.sandbox.start(spec(f.code.path(), 128)).await.unwrap();
    let b = call(&mut second, "b").await;
    let c = call(&mut third, "c").await;
    report(&format!(
        "boot + load + save: {boot:?}; restore to ready: {restore:?}"
    ));

    // The clones carry the state saved after loading: the module-level seed of
    // the first VM, and no invocation yet.
    assert_eq!(b["loaded_seed"], a1["loaded_seed"], "restored, not booted");
    assert_eq!(c["loaded_seed"], a1["loaded_seed"]);
    assert_eq!(b["calls"], 1);
    assert_eq!(c["calls"], 1);
    // Each clone was reseeded: their random streams differ from each other.
    assert_ne!(b["fresh"], c["fresh"], "clones must not share randomness");
    assert_ne!(b["fresh"], a1["fresh"]);
    // And its clock was set: not the time of the save.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let skew = (b["now"].as_f64().unwrap() - now).abs();
    assert!(skew < 5.0, "restored clock is {skew}s off");

    for i in [first, second, third] {
        i.destroy().await;
    }
    assert_nothing_left(&f.run_dir);
    f.sandbox.reap_leftovers().await.unwrap();
    assert_eq!(
        std::fs::read_dir(&snapshots).unwrap().count(),
        0,
        "snapshots are removed with the sandbox's leftovers"
    );
}
