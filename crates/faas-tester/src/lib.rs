//! Harness for end-to-end tests: a real `faas serve` process on a private data
//! directory and cgroup parent, a client for its API, and a check that nothing
//! of it (container, cgroup, mount, process, temp dir) outlives it.
//!
//! Prerequisites (root, `runc`, `mmdebstrap`, the built `faas` and
//! `faas-guest-agent` binaries) are checked up front. When one is missing the
//! test says so loudly on stderr and passes as skipped, except under CI
//! (`CI` set), where a missing prerequisite fails the test.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

pub mod docker;

pub use docker::{docker_cli, docker_host, DockerDaemon};

/// Sandbox kinds the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executor {
    /// runc-based namespaces + cgroups + seccomp.
    Native,
    /// Containers of a real `dockerd` (`FAAS_DOCKER_HOST`).
    Docker,
    /// QEMU `microvm` guests (TCG where KVM is paravirtual) with the agent on vsock.
    Microvm,
    /// The microVM sandbox on a real Firecracker (`FAAS_FC_BINARY_PATH`).
    Firecracker,
}

impl Executor {
    /// The `--executor` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Executor::Native => "native",
            Executor::Docker => "docker",
            Executor::Microvm | Executor::Firecracker => "microvm",
        }
    }

    /// The name in test output.
    pub fn label(self) -> &'static str {
        match self {
            Executor::Firecracker => "firecracker",
            other => other.as_str(),
        }
    }

    /// Whether instances are virtual machines.
    pub fn is_vm(self) -> bool {
        matches!(self, Executor::Microvm | Executor::Firecracker)
    }
}

/// Generate one `#[tokio::test]` per executor for each listed `async fn(Executor)`.
#[macro_export]
macro_rules! executor_tests {
    ($($name:ident),* $(,)?) => {
        mod native {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Executor::Native).await
                }
            )*
        }
        mod docker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Executor::Docker).await
                }
            )*
        }
        mod microvm {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Executor::Microvm).await
                }
            )*
        }
        mod firecracker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Executor::Firecracker).await
                }
            )*
        }
    };
}

/// `vhost-device-vsock` on `PATH`, or where `scripts/lib.sh` installs it.
pub fn vhost_vsock() -> Option<PathBuf> {
    on_path("vhost-device-vsock").or_else(|| {
        let cached = PathBuf::from("/var/cache/faas/cargo-root/bin/vhost-device-vsock");
        cached.is_file().then_some(cached)
    })
}

/// The first `name` on `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Pids of the VMM processes (QEMU or Firecracker) whose command line names
/// `data_dir`: the microVMs of the server on that data directory.
pub fn vmm_pids(data_dir: &Path) -> Vec<i32> {
    let data = data_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
            let program = cmdline.split('\0').next()?.rsplit('/').next()?.to_string();
            let vmm = program.starts_with("qemu-system") || program == "firecracker";
            (vmm && cmdline.contains(&data)).then_some(pid)
        })
        .collect()
}

/// Where the built binaries are: `FAAS_BIN_DIR`, else the directory above the
/// test executable (`target/<profile>/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FAAS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The `faas` binary.
pub fn faas_bin() -> PathBuf {
    bin_dir().join("faas")
}

/// Image cache shared by every test server.
pub fn images_dir() -> PathBuf {
    std::env::var_os("FAAS_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/faas/images"))
}

/// `None` when everything the suite needs is here; else what is missing.
pub fn missing_prerequisite(executor: Executor) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (sandboxes need root)".into());
    }
    for bin in ["faas", "faas-guest-agent"] {
        if !bin_dir().join(bin).is_file() {
            return Some(format!(
                "{bin} not built in {} (run `cargo build --workspace --bins` first)",
                bin_dir().display()
            ));
        }
    }
    match executor {
        Executor::Native => {
            let runc = std::process::Command::new("runc").arg("--version").output();
            if !runc.is_ok_and(|o| o.status.success()) {
                return Some("runc is not installed (apt-get install runc)".into());
            }
        }
        Executor::Docker => {
            let Some(host) = docker_host() else {
                return Some(
                    "FAAS_DOCKER_HOST is not set (./scripts/test starts a dockerd and sets it)"
                        .into(),
                );
            };
            if !docker::ping(&host) {
                return Some(format!("no Docker daemon answers at {host}"));
            }
        }
        Executor::Microvm => {
            for (bin, hint) in [
                ("qemu-system-x86_64", "apt-get install qemu-system-x86"),
                ("mke2fs", "apt-get install e2fsprogs"),
                ("apt-get", "a Debian host, to fetch the guest kernel"),
            ] {
                if on_path(bin).is_none() {
                    return Some(format!("{bin} is not installed ({hint})"));
                }
            }
            if vhost_vsock().is_none() {
                return Some(
                    "vhost-device-vsock is not installed (cargo install vhost-device-vsock)".into(),
                );
            }
        }
        Executor::Firecracker => {
            let Some(fc) = std::env::var_os("FAAS_FC_BINARY_PATH") else {
                return Some(FIRECRACKER_UNSET.into());
            };
            if !Path::new(&fc).is_file() {
                return Some(format!(
                    "FAAS_FC_BINARY_PATH={} is not a file",
                    fc.to_string_lossy()
                ));
            }
            if std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_err()
            {
                return Some("/dev/kvm cannot be opened (Firecracker needs KVM)".into());
            }
        }
    }
    None
}

/// Why the Firecracker variants skip when no binary is configured. Firecracker
/// cannot be installed on every machine (not on ours: its KVM is paravirtual and
/// the binary is not packaged), so this skip is not a CI failure.
const FIRECRACKER_UNSET: &str =
    "FAAS_FC_BINARY_PATH is not set: no firecracker binary to run (these tests run when it points at one)";

/// One microVM server at a time per test binary: under TCG two cores boot one
/// guest in seconds and several in tens of seconds, and a starved
/// vhost-device-vsock stops answering.
static ONE_MICROVM_SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Skip (loudly) or, under CI, fail when a prerequisite is missing.
/// Returns `false` when the test should return early.
pub fn require(executor: Executor, test: &str) -> bool {
    match missing_prerequisite(executor) {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() && why != FIRECRACKER_UNSET => {
            panic!(
                "{test} [{}]: prerequisite missing under CI: {why}",
                executor.label()
            )
        }
        Some(why) => {
            // Straight to the stderr handle: the test harness captures eprintln!.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!! SKIPPED {test} [{}]: {why} !!!!!!!!\n",
                executor.label()
            );
            false
        }
    }
}

/// Whether `tools` are all on `PATH`, as [`require`] says so (a panic under CI).
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| on_path(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("not on PATH: {}", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("{test}: prerequisite missing under CI: {why}");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED {test}: {why} !!!!!!!!\n"
    );
    false
}

/// `PATH` for the server: ours, plus the directory of `vhost-device-vsock`.
fn server_path() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(dir) = vhost_vsock().as_deref().and_then(Path::parent) {
        dirs.push(dir.to_path_buf());
    }
    std::env::join_paths(dirs).expect("PATH entries")
}

/// A running `faas serve`.
pub struct TestServer {
    /// Base URL.
    pub url: String,
    /// Sandbox kind.
    pub executor: Executor,
    data: tempfile::TempDir,
    cgroup_parent: String,
    docker_host: Option<String>,
    extra_args: Vec<String>,
    child: Option<Child>,
    http: reqwest::Client,
    /// The admin key the server made at its first start (`None` with
    /// `--insecure-no-auth`).
    pub admin_key: Option<String>,
    /// Held for the server's life by microVM servers (see [`ONE_MICROVM_SERVER`]);
    /// dropped after `Drop::drop` has stopped the server.
    _vm_turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl TestServer {
    /// Start a server with default limits, but no pre-started instances
    /// unless `--prestart` is among the flags (see `spawn`).
    pub async fn start(executor: Executor) -> TestServer {
        Self::start_with(executor, &[]).await
    }

    /// Start a server with extra `faas serve` flags.
    pub async fn start_with(executor: Executor, extra_args: &[&str]) -> TestServer {
        Self::start_on(executor, docker_host(), extra_args).await
    }

    /// Start a server using the Docker daemon at `docker_host` (for the Docker sandbox).
    pub async fn start_on(
        executor: Executor,
        docker_host: Option<String>,
        extra_args: &[&str],
    ) -> TestServer {
        let data = tempfile::Builder::new()
            .prefix("faas-test-")
            .tempdir()
            .expect("temp data dir");
        let vm_turn = match executor {
            e if e.is_vm() => Some(ONE_MICROVM_SERVER.lock().await),
            _ => None,
        };
        let mut server = TestServer {
            url: String::new(),
            executor,
            data,
            cgroup_parent: format!(
                "faas-test-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            docker_host,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            http: reqwest::Client::new(),
            admin_key: None,
            _vm_turn: vm_turn,
        };
        server.spawn().await;
        server
    }

    /// The `faas.owner` label of this server's containers.
    pub fn docker_owner(&self) -> String {
        self.layout().owner_label()
    }

    /// Where the server keeps what, under its data directory.
    pub fn layout(&self) -> faas_platform::DataLayout {
        faas_platform::DataLayout::new(self.data.path().canonicalize().expect("data dir"))
    }

    /// The cgroup under which this server's instances live.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    async fn spawn(&mut self) {
        let port = free_port();
        // With `--tls-cert`, speak HTTPS to the name the test certificate
        // holds (`localhost`), trusting that certificate.
        let ca = self
            .extra_args
            .iter()
            .position(|a| a == "--tls-cert")
            .and_then(|i| self.extra_args.get(i + 1))
            .map(|path| std::fs::read(path).expect("the test certificate"));
        self.url = match ca {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        self.http = client_trusting(None, ca.as_deref());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("server.log"))
            .expect("log file");
        let mut cmd = Command::new(faas_bin());
        cmd.arg("serve");
        if let Some(host) = &self.docker_host {
            cmd.args(["--docker-host", host]);
        }
        // `faas serve` picks Firecracker when this is set: only for its variant.
        if self.executor != Executor::Firecracker {
            cmd.env_remove("FAAS_FC_BINARY_PATH");
        }
        // Pre-started instances come and go in the background, which would
        // blur the instances, containers and mounts tests count: only the
        // tests of them (and of what a specialised one guarantees) ask.
        if !self.extra_args.iter().any(|a| a == "--prestart") {
            cmd.args(["--prestart", "0"]);
        }
        let child = cmd
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(self.data.path())
            .args(["--executor", self.executor.as_str()])
            .arg("--images-dir")
            .arg(images_dir())
            .args(["--cgroup-parent", &self.cgroup_parent])
            .args(&self.extra_args)
            .env("PATH", server_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn faas serve");
        self.child = Some(child);
        // The first start may build images; allow for it.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send().await {
                if r.status().is_success() {
                    self.admin_key = std::fs::read_to_string(self.data.path().join("admin.key"))
                        .ok()
                        .map(|k| k.trim().to_string());
                    self.http = client_trusting(self.admin_key.as_deref(), ca.as_deref());
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("faas serve exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "faas serve did not come up:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("server.log")).unwrap_or_default()
    }

    /// Stop with SIGTERM and wait for a clean exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .expect("faas serve did not stop within 30s")
                .expect("wait");
            assert!(
                status.success(),
                "faas serve exited with {status}:\n{}",
                self.log()
            );
        }
    }

    /// SIGKILL the server, as a crash would: no cleanup runs.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // Reap it so it is really gone before the caller looks around.
            if let Some(pid) = child.id() {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid as i32, &mut status, 0) };
            }
        }
    }

    /// Stop, then start again on the same data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// [`TestServer::leftovers`] once what is exiting has exited: a process
    /// killed at shutdown may take a moment to be gone.
    pub async fn settled_leftovers(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let found = self.leftovers();
            if found.is_empty() || Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop and assert that nothing of any instance remains.
    pub async fn stop_and_check_clean(mut self) {
        self.stop().await;
        let mut leftovers = self.settled_leftovers().await;
        // Saved microVM states are a cache of one run.
        if let Ok(states) = std::fs::read_dir(self.layout().microvm_snapshots()) {
            for state in states.flatten() {
                leftovers.push(format!("microVM snapshot {}", state.path().display()));
            }
        }
        // ...and its runtime directories outside the data directory.
        let sockets = self.layout().sockets("native");
        if let Some(parent) = sockets.parent().filter(|p| p.exists()) {
            leftovers.push(format!("socket directory {}", parent.display()));
        }
        // A stopped server also removes the parent cgroups its instances and
        // build sandboxes lived in.
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                for parent in [
                    self.cgroup_parent.clone(),
                    format!("{}-build", self.cgroup_parent),
                ] {
                    let parent = c.path().join(parent);
                    if parent.is_dir() {
                        leftovers.push(format!("cgroup parent {}", parent.display()));
                    }
                }
            }
        }
        assert!(
            leftovers.is_empty(),
            "left behind: {leftovers:#?}\n{}",
            self.log()
        );
    }

    /// How many instances the server runs now (containers or VMs).
    pub fn instances(&self) -> usize {
        let layout = self.layout();
        let count = |dir: std::path::PathBuf| std::fs::read_dir(dir).map_or(0, |d| d.count());
        match self.executor {
            Executor::Native => count(layout.instances()),
            Executor::Docker => count(layout.sockets("docker")),
            Executor::Microvm | Executor::Firecracker => count(layout.microvm_run()),
        }
    }

    /// Resident memory of the server process, kB.
    pub fn server_rss_kb(&self) -> u64 {
        let pid = self.child.as_ref().and_then(Child::id).expect("running");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Containers, bundle dirs, cgroups, mounts and processes of this server's instances.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let layout = self.layout();
        for state in [layout.runc_state(), layout.build_state()] {
            if !state.is_dir() {
                continue;
            }
            let out = std::process::Command::new("runc")
                .arg("--root")
                .arg(&state)
                .args(["list", "--quiet"])
                .output()
                .expect("runc list");
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                found.push(format!("runc container {id}"));
            }
        }
        for dir in [layout.instances(), layout.build_bundles()] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    found.push(format!("instance dir {}", e.path().display()));
                }
            }
        }
        // Half-written code trees and dependency layers.
        for dir in ["code", "deps"] {
            if let Ok(entries) = std::fs::read_dir(self.data.path().join(dir)) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with(".tmp-") {
                        found.push(format!("temporary {}", e.path().display()));
                    }
                }
            }
        }
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                for parent in [
                    self.cgroup_parent.clone(),
                    format!("{}-build", self.cgroup_parent),
                ] {
                    if let Ok(children) = std::fs::read_dir(c.path().join(parent)) {
                        for child in children.flatten().filter(|e| e.path().is_dir()) {
                            found.push(format!("cgroup {}", child.path().display()));
                        }
                    }
                }
            }
        }
        if self.executor == Executor::Docker {
            if let Some(host) = &self.docker_host {
                for id in docker::containers_of(host, &self.docker_owner()) {
                    found.push(format!("docker container {id}"));
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(layout.microvm_run()) {
            for e in entries.flatten() {
                found.push(format!("microVM dir {}", e.path().display()));
            }
        }
        for kind in ["native", "docker"] {
            if let Ok(entries) = std::fs::read_dir(layout.sockets(kind)) {
                for e in entries.flatten() {
                    found.push(format!("{kind} socket dir {}", e.path().display()));
                }
            }
        }
        let data = self.data.path().to_string_lossy().to_string();
        let server = self.child.as_ref().and_then(Child::id);
        for line in std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
        {
            if line.contains(&data) {
                found.push(format!("mount {line}"));
            }
        }
        // Ephemeral-storage disks: their files, and loop devices on them. The
        // per-size templates they copy are a cache of the run, which the
        // shutdown removes with the directory (`tests/ephemeral.rs` checks).
        for kind in ["native", "docker"] {
            if let Ok(entries) = std::fs::read_dir(layout.ephemeral(kind)) {
                for e in entries.flatten() {
                    if !e.file_name().to_string_lossy().starts_with("template-") {
                        found.push(format!("{kind} ephemeral storage {}", e.path().display()));
                    }
                }
            }
        }
        if let Ok(out) = std::process::Command::new("losetup").arg("-a").output() {
            let root = layout.root().to_string_lossy().into_owned();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.contains(&data) || line.contains(&root) {
                    found.push(format!("loop device {line}"));
                }
            }
        }
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let cgroup = std::fs::read_to_string(p.path().join("cgroup")).unwrap_or_default();
                if cgroup.contains(&format!("/{}/", self.cgroup_parent)) {
                    let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
                    let state = stat.rsplit(") ").next().unwrap_or("").split(' ').next();
                    // A zombie holds nothing but its pid until its new parent
                    // (the host's init, when `runc run` was killed mid-start)
                    // reaps it.
                    if state != Some("Z") {
                        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                        found.push(format!(
                            "process {}: {}",
                            p.file_name().to_string_lossy(),
                            String::from_utf8_lossy(&cmdline).replace('\0', " ")
                        ));
                    }
                    continue;
                }
                // VMMs and vsock helpers name the data dir on their command line.
                let pid = p.file_name().to_string_lossy().parse::<u32>().ok();
                if pid.is_none() || pid == server {
                    continue;
                }
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.contains(&data) {
                    found.push(format!("process {}: {cmdline}", pid.unwrap_or_default()));
                }
            }
        }
        found
    }

    /// A client sending the admin key (when there is one) with every request.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// GET `path`, returning status and JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// DELETE `path`.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(format!("{}{path}", self.url))
            .send()
            .await
            .expect("DELETE");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST raw bytes.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .body(body)
            .send()
            .await
            .expect("POST")
    }

    /// POST JSON, returning status and JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.post_raw(path, serde_json::to_vec(body).unwrap()).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Deploy from a files map; panics unless 201.
    pub async fn deploy(
        &self,
        name: &str,
        language: &str,
        handler: &str,
        files: &[(&str, &str)],
        extra: Value,
    ) -> Value {
        let (status, body) = self.try_deploy(name, language, handler, files, extra).await;
        assert_eq!(status, 201, "deploy {name}: {body}\n{}", self.log());
        body
    }

    /// Deploy from a files map, waiting for its build; returns status and body.
    pub async fn try_deploy(
        &self,
        name: &str,
        language: &str,
        handler: &str,
        files: &[(&str, &str)],
        extra: Value,
    ) -> (u16, Value) {
        let files: serde_json::Map<String, Value> = files
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let mut req =
            json!({"name": name, "language": language, "handler": handler, "files": files});
        if let Value::Object(extra) = extra {
            req.as_object_mut().unwrap().extend(extra);
        }
        self.post_json("/functions?wait=true", &req).await
    }

    /// `GET /metrics` as the admin: the Prometheus text.
    pub async fn metrics(&self) -> String {
        self.http()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// How many pre-started instances are ready (`faas_prestarted_instances`).
    pub async fn spares_ready(&self) -> u64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("faas_prestarted_instances "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Wait until at least `want` pre-started instances are ready; false if
    /// they are not within `within`.
    pub async fn wait_for_spares(&self, want: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.spares_ready().await >= want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Invoke and return (status, headers, body bytes).
    pub async fn invoke(&self, name: &str, payload: &[u8]) -> Invoked {
        let r = self
            .post_raw(&format!("/functions/{name}/invoke"), payload.to_vec())
            .await;
        let status = r.status().as_u16();
        let header = |h: &str| {
            r.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let cold = header("x-faas-cold-start");
        let prestarted = header("x-faas-prestarted");
        let request_id = header("x-faas-request-id");
        let content_type = header("content-type");
        let body = r.bytes().await.expect("body").to_vec();
        Invoked {
            status,
            cold_start: cold.as_deref() == Some("true"),
            prestarted: prestarted.as_deref() == Some("true"),
            request_id,
            content_type,
            body,
        }
    }

    /// Invoke with JSON and decode a JSON response; panics unless 200.
    pub async fn invoke_json(&self, name: &str, payload: Value) -> Value {
        let r = self
            .invoke(name, &serde_json::to_vec(&payload).unwrap())
            .await;
        assert_eq!(r.status, 200, "invoke {name}: {}\n{}", r.text(), self.log());
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
    }

    /// Run the `faas` CLI against this server.
    pub async fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> CliOutput {
        self.cli_as(self.admin_key.as_deref(), args, stdin).await
    }

    /// Run the `faas` CLI with `FAAS_API_KEY=key`; with `None`, the CLI
    /// finds no key but this server's admin key file (`FAAS_DATA_DIR`), which
    /// it reads as root.
    pub async fn cli_as(
        &self,
        key: Option<&str>,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> CliOutput {
        use tokio::io::AsyncWriteExt;
        let mut cmd = Command::new(faas_bin());
        cmd.env_remove("FAAS_API_KEY")
            .env("FAAS_PROFILE", self.data.path().join("no-profile.toml"))
            .env("FAAS_DATA_DIR", self.data.path());
        if let Some(i) = self.extra_args.iter().position(|a| a == "--tls-cert") {
            cmd.env("FAAS_CA_CERT", &self.extra_args[i + 1]);
        }
        if let Some(key) = key {
            cmd.env("FAAS_API_KEY", key);
        }
        let mut child = cmd
            .args(args)
            .env("FAAS_SERVER", &self.url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn faas");
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).await.unwrap();
        }
        drop(input);
        let out = child.wait_with_output().await.expect("faas cli");
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A failed assertion skips stop(): still end the server (SIGTERM cleans up).
        if let Some(child) = self.child.as_ref().and_then(|c| c.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child as i32, libc::SIGTERM) };
            for _ in 0..100 {
                // SAFETY: as above; signal 0 only probes.
                if unsafe { libc::kill(child as i32, 0) } != 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A client sending `key` as `Authorization: Bearer` with every request.
pub fn client_with(key: Option<&str>) -> reqwest::Client {
    client_trusting(key, None)
}

/// [`client_with`], also trusting the PEM certificate `ca`.
pub fn client_trusting(key: Option<&str>, ca: Option<&[u8]>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .expect("a key is a header value");
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let mut builder = reqwest::Client::builder().default_headers(headers);
    if let Some(pem) = ca {
        builder = builder
            .add_root_certificate(reqwest::Certificate::from_pem(pem).expect("a PEM certificate"));
    }
    builder.build().expect("HTTP client")
}

/// An invocation's outcome.
pub struct Invoked {
    /// HTTP status.
    pub status: u16,
    /// `x-faas-cold-start`.
    pub cold_start: bool,
    /// `x-faas-prestarted`: the cold start took a pre-started instance.
    pub prestarted: bool,
    /// `x-faas-request-id`.
    pub request_id: Option<String>,
    /// `content-type`.
    pub content_type: Option<String>,
    /// Body.
    pub body: Vec<u8>,
}

impl Invoked {
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body as JSON (`Null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What a CLI run printed.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Base64 of `bytes`.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A zip of regular files, each with mode 0644 (as zip tools that drop
/// modes write them).
pub fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut out = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut out);
    let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
    for (name, data) in files {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
    out.into_inner()
}

/// A tar.gz with raw entry names (so tests can craft `../` and absolute paths).
pub fn tar_gz(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    use std::io::Write;
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    let raw = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
