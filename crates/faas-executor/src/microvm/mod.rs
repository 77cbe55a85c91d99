//! The microVM sandbox: each instance is a virtual machine (QEMU `microvm`, or
//! Firecracker) booting the shared guest kernel and a runtime's root disk, with
//! the guest agent as init listening on vsock port 1234.
//!
//! - The guest side (kernel, initramfs, root disks) comes from
//!   `faas_images::microvm`; function code and dependencies are extra
//!   read-only ext4 disks built once per content ([`disk`]).
//! - Both VMMs expose the guest's vsock as a hybrid Unix socket; [`vsock`] is
//!   the one host-side client (`CONNECT 1234` / `OK <port>`), after which the
//!   usual agent frames flow ([`crate::agent::AgentConn`]).
//! - Per VM there is a directory (sockets, console log, VMM logs), the VMM
//!   process and, under QEMU, a `vhost-device-vsock` process. A supervisor task
//!   owns the processes: when the VMM exits (guest panic, kill) it ends the
//!   vsock helper too, so a pending call fails at once and is reported as a
//!   crash with the console's last lines. [`VmBackend`] removes everything on
//!   every path (destroy, error, drop).
//! - Memory: the VM gets `memory_mb` plus [`MicrovmConfig::overhead_mb`] for
//!   the guest kernel and agent; function processes run in a guest cgroup
//!   capped at `memory_mb`, so the OOM killer picks the function, never the
//!   agent, and its report on the console tells the host it was an OOM kill.

pub mod disk;
pub mod firecracker;
pub mod qemu;
pub mod vsock;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use faas_common::protocol::AGENT_VSOCK_PORT;
use faas_common::Language;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::{oneshot, watch};

use crate::instance::{AgentInstance, Backend};
use crate::{ExecutorError, Instance, InstanceSpec, Sandbox};
pub use firecracker::{FirecrackerApi, FirecrackerConfig};
pub use qemu::{Accel, QemuConfig};

/// The guest's vsock context id (any value >= 3 works; each VM has its own
/// hybrid socket, so all guests can share it).
pub const GUEST_CID: u32 = 3;
/// The agent's control port (reseed after a snapshot restore).
pub const CONTROL_PORT: u32 = 1235;
/// Labels of the extra disks, as the agent looks for them.
pub use faas_images::microvm::{CODE_LABEL, DEPS_LABEL};

/// Which VMM runs the VMs.
#[derive(Debug, Clone)]
pub enum Vmm {
    /// QEMU `microvm` with `vhost-device-vsock`.
    Qemu(QemuConfig),
    /// A real `firecracker` binary driven over its API socket.
    Firecracker(FirecrackerConfig),
}

/// What the guests boot.
#[derive(Debug, Clone)]
pub struct GuestImages {
    /// Uncompressed kernel (`FAAS_FC_KERNEL_PATH` or the built image).
    pub kernel: PathBuf,
    /// Initramfs that loads the virtio/vsock modules and mounts the root disk.
    pub initramfs: Option<PathBuf>,
    /// Root disk per runtime image (`FAAS_FC_ROOTFS_PATH` or the built disks).
    pub disks: HashMap<Language, PathBuf>,
}

/// Settings of the microVM sandbox.
#[derive(Debug, Clone)]
pub struct MicrovmConfig {
    /// The VMM.
    pub vmm: Vmm,
    /// Per-VM directories (sockets, logs).
    pub run_dir: PathBuf,
    /// Where code and dependency disks are cached.
    pub disk_cache: PathBuf,
    /// vCPUs per VM.
    pub vcpus: u32,
    /// Guest memory on top of the function's `memory_mb` (kernel, agent, page cache).
    pub overhead_mb: u32,
    /// How long a VM may take to boot and start its agent.
    pub start_timeout: Duration,
    /// `tsc_early_khz` for the guest command line; `None`: the host's, from
    /// `/proc/cpuinfo` (under TCG a third of boots hang without it).
    pub tsc_khz: Option<u64>,
}

impl Default for MicrovmConfig {
    fn default() -> Self {
        MicrovmConfig {
            vmm: Vmm::Qemu(QemuConfig::default()),
            run_dir: PathBuf::from("/run/faas/microvm"),
            disk_cache: PathBuf::from("/var/lib/faas/microvm-disks"),
            vcpus: 1,
            overhead_mb: 128,
            start_timeout: Duration::from_secs(60),
            tsc_khz: None,
        }
    }
}

/// Everything a VMM needs to start one VM.
#[derive(Debug, Clone)]
pub struct VmPlan {
    /// The VM's own directory.
    pub dir: PathBuf,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs, if any.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Read-only disks as (id, image); the root disk first.
    pub disks: Vec<(String, PathBuf)>,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Where the guest's serial console goes.
    pub console_log: PathBuf,
}

/// A started VMM.
pub struct Launched {
    /// The VMM process.
    pub vmm: Child,
    /// `vhost-device-vsock`, under QEMU.
    pub helper: Option<Child>,
    /// The hybrid vsock socket.
    pub vsock_uds: PathBuf,
}

/// Starts microVM instances.
pub struct MicrovmSandbox {
    config: MicrovmConfig,
    images: GuestImages,
    tsc_khz: Option<u64>,
}

impl MicrovmSandbox {
    /// A sandbox booting `images` with `config`. Fails when a binary the VMM
    /// needs is missing or the directories cannot be made.
    pub async fn new(config: MicrovmConfig, images: GuestImages) -> Result<Self, ExecutorError> {
        let binaries: Vec<(&Path, &str)> = match &config.vmm {
            Vmm::Qemu(q) => vec![
                (&q.binary, "apt-get install qemu-system-x86"),
                (&q.vhost_vsock, "cargo install vhost-device-vsock"),
            ],
            Vmm::Firecracker(f) => vec![(&f.binary, "set FAAS_FC_BINARY_PATH")],
        };
        for (bin, hint) in binaries {
            if find_binary(bin).is_none() {
                return Err(ExecutorError::Start(format!(
                    "{} not found ({hint})",
                    bin.display()
                )));
            }
        }
        if !images.kernel.is_file() {
            return Err(ExecutorError::Start(format!(
                "guest kernel {} not found (faas images build --microvm)",
                images.kernel.display()
            )));
        }
        for dir in [&config.run_dir, &config.disk_cache] {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(ExecutorError::io(format!("create {}", dir.display())))?;
        }
        let tsc_khz = config.tsc_khz.or_else(host_tsc_khz);
        Ok(MicrovmSandbox {
            config,
            images,
            tsc_khz,
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &MicrovmConfig {
        &self.config
    }

    fn cmdline(&self, memory_mb: u32) -> String {
        let mut c =
            format!("console=ttyS0 reboot=k panic=-1 pci=off quiet faas.memory_mb={memory_mb}");
        if let Some(khz) = self.tsc_khz {
            c.push_str(&format!(" tsc_early_khz={khz}"));
        }
        c
    }

    async fn plan(&self, spec: &InstanceSpec, dir: PathBuf) -> Result<VmPlan, ExecutorError> {
        let root = self
            .images
            .disks
            .get(&spec.language.image())
            .ok_or_else(|| ExecutorError::ImageMissing(spec.language.to_string()))?;
        let mut disks = vec![("rootfs".to_string(), root.clone())];
        if let Some(code) = &spec.code_dir {
            disks.push((
                "code".into(),
                disk::disk_for(&self.config.disk_cache, code, CODE_LABEL).await?,
            ));
        }
        if let Some(deps) = &spec.deps_dir {
            disks.push((
                "deps".into(),
                disk::disk_for(&self.config.disk_cache, deps, DEPS_LABEL).await?,
            ));
        }
        Ok(VmPlan {
            console_log: dir.join("console.log"),
            dir,
            kernel: self.images.kernel.clone(),
            initramfs: self.images.initramfs.clone(),
            cmdline: self.cmdline(spec.memory_mb),
            disks,
            mem_mib: spec.memory_mb + self.config.overhead_mb,
            vcpus: self.config.vcpus,
        })
    }

    /// Boot a VM for `spec` and connect to its agent, without loading a handler.
    async fn boot(
        &self,
        spec: &InstanceSpec,
    ) -> Result<(VmBackend, tokio::net::UnixStream), ExecutorError> {
        let started = Instant::now();
        let id = format!("vm-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let dir = self.config.run_dir.join(&id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(ExecutorError::io(format!("create {}", dir.display())))?;
        let mut backend = VmBackend::new(id, dir.clone());
        let plan = match self.plan(spec, dir).await {
            Ok(p) => p,
            Err(e) => {
                backend.destroy().await;
                return Err(e);
            }
        };
        let launched = match &self.config.vmm {
            Vmm::Qemu(q) => qemu::launch(q, &plan).await,
            Vmm::Firecracker(f) => firecracker::launch(f, &plan).await,
        };
        let launched = match launched {
            Ok(l) => l,
            Err(e) => {
                backend.destroy().await;
                return Err(e);
            }
        };
        let uds = launched.vsock_uds.clone();
        backend.supervise(launched);
        match backend
            .wait_for_agent(&uds, self.config.start_timeout)
            .await
        {
            Ok(stream) => {
                tracing::info!(id = %backend.id, "microVM agent ready in {:?}", started.elapsed());
                Ok((backend, stream))
            }
            Err(e) => {
                backend.destroy().await;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Sandbox for MicrovmSandbox {
    fn kind(&self) -> &'static str {
        "microvm"
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Box<dyn Instance>, ExecutorError> {
        let (backend, stream) = self.boot(&spec).await?;
        let instance = AgentInstance::start(
            backend,
            stream,
            spec.memory_mb,
            spec.init,
            self.config.start_timeout,
        )
        .await?;
        Ok(Box::new(instance))
    }

    async fn reap_leftovers(&self) -> Result<usize, ExecutorError> {
        let mut removed = 0;
        let Ok(mut entries) = tokio::fs::read_dir(&self.config.run_dir).await else {
            return Ok(0);
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let dir = entry.path();
            if let Ok(pids) = tokio::fs::read_to_string(dir.join("pids")).await {
                for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // Only a process still naming this VM's directory is ours (pids are reused).
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    if String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
                        // SAFETY: plain kill(2) on a pid we checked.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = tokio::fs::remove_dir_all(&dir).await;
            removed += 1;
        }
        Ok(removed)
    }
}

/// Ask the agent of a restored clone to reseed its RNG and set its clock (a
/// snapshot's clones would otherwise share one random stream and a stale time).
pub async fn reseed_guest(vsock_uds: &Path) -> Result<(), ExecutorError> {
    let mut stream = vsock::connect(vsock_uds, CONTROL_PORT, Duration::from_secs(5))
        .await
        .map_err(|e| ExecutorError::Start(format!("reseed: {e}")))?;
    let mut req = Vec::with_capacity(72);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    req.extend_from_slice(&now.to_be_bytes());
    let mut seed = [0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(ExecutorError::io("read host randomness"))?;
    req.extend_from_slice(&seed);
    stream
        .write_all(&req)
        .await
        .map_err(ExecutorError::io("send reseed"))?;
    let mut reply = [0u8; 3];
    stream
        .read_exact(&mut reply)
        .await
        .map_err(ExecutorError::io("read reseed reply"))?;
    if &reply == b"OK\n" {
        Ok(())
    } else {
        Err(ExecutorError::Start("guest refused to reseed".into()))
    }
}

/// One VM: its directory and, through the supervisor task, its processes.
pub struct VmBackend {
    id: String,
    dir: PathBuf,
    console_log: PathBuf,
    /// Console bytes already scanned for OOM reports.
    console_seen: u64,
    kill: Option<oneshot::Sender<()>>,
    exited: Option<watch::Receiver<Option<String>>>,
    supervisor: Option<tokio::task::JoinHandle<()>>,
    done: bool,
}

impl VmBackend {
    fn new(id: String, dir: PathBuf) -> Self {
        VmBackend {
            console_log: dir.join("console.log"),
            id,
            dir,
            console_seen: 0,
            kill: None,
            exited: None,
            supervisor: None,
            done: false,
        }
    }

    /// Hand the processes to a task that ends the vsock helper as soon as the
    /// VMM exits (so the host's pending read fails at once) and kills both on request.
    fn supervise(&mut self, launched: Launched) {
        let Launched {
            mut vmm,
            mut helper,
            ..
        } = launched;
        let pids: Vec<String> = [vmm.id(), helper.as_ref().and_then(Child::id)]
            .into_iter()
            .flatten()
            .map(|p| p.to_string())
            .collect();
        let _ = std::fs::write(self.dir.join("pids"), pids.join("\n"));
        let (kill_tx, mut kill_rx) = oneshot::channel::<()>();
        let (exit_tx, exit_rx) = watch::channel(None);
        self.kill = Some(kill_tx);
        self.exited = Some(exit_rx);
        self.supervisor = Some(tokio::spawn(async move {
            let status = tokio::select! {
                s = vmm.wait() => Some(s),
                _ = &mut kill_rx => None,
            };
            let what = match status {
                Some(Ok(s)) => format!("VMM exited ({s})"),
                Some(Err(e)) => format!("VMM wait failed: {e}"),
                None => {
                    let _ = vmm.kill().await;
                    "VMM stopped by the host".into()
                }
            };
            if let Some(h) = helper.as_mut() {
                let _ = h.kill().await;
            }
            let _ = exit_tx.send(Some(what));
        }));
    }

    fn vmm_exit(&self) -> Option<String> {
        self.exited.as_ref().and_then(|rx| rx.borrow().clone())
    }

    async fn wait_for_agent(
        &mut self,
        uds: &Path,
        timeout: Duration,
    ) -> Result<tokio::net::UnixStream, ExecutorError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.vmm_exit() {
                return Err(ExecutorError::Start(format!(
                    "{exit} during boot; console: {}",
                    tail(&self.console_log, 8)
                )));
            }
            match vsock::connect(uds, AGENT_VSOCK_PORT, Duration::from_secs(5)).await {
                Ok(stream) => return Ok(stream),
                Err(vsock::VsockError::BadReply(r)) => {
                    return Err(ExecutorError::Start(format!(
                        "hybrid vsock handshake: unexpected reply {r:?}"
                    )))
                }
                // Not up yet: the socket appears, then the guest's listener.
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(ExecutorError::Start(format!(
                    "agent not ready after {timeout:?}; console: {}",
                    tail(&self.console_log, 8)
                )));
            }
            // Gently: every failed CONNECT costs the vsock backend a connection.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The VM's directory (sockets, `console.log`, VMM logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[async_trait]
impl Backend for VmBackend {
    fn id(&self) -> &str {
        &self.id
    }

    async fn oom_struck(&mut self) -> bool {
        let Ok(mut f) = std::fs::File::open(&self.console_log) else {
            return false;
        };
        let mut new = String::new();
        if f.seek(SeekFrom::Start(self.console_seen)).is_err()
            || f.read_to_string(&mut new).is_err()
        {
            return false;
        }
        self.console_seen += new.len() as u64;
        // The guest kernel's report, "Memory cgroup out of memory: Killed process
        // N (python3)" (pr_err, shown even with `quiet`).
        new.to_ascii_lowercase()
            .contains("out of memory: killed process")
    }

    async fn diagnose(&mut self) -> String {
        // The supervisor records the exit a moment after the connection drops.
        for _ in 0..50 {
            if self.vmm_exit().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let state = self
            .vmm_exit()
            .unwrap_or_else(|| "VMM still running".into());
        format!("{state}; console: {}", tail(&self.console_log, 8))
    }

    async fn destroy(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(task) = self.supervisor.take() {
            let _ = task.await;
        }
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }
}

impl Drop for VmBackend {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The supervisor kills both processes when this sender drops or fires;
        // if the runtime is gone, kill_on_drop ends them with the task.
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last `n` non-empty lines of a log file, joined with " | ".
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The host's TSC frequency in kHz, from `/proc/cpuinfo`.
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// `bin` itself if it is a path, else its location on `PATH`.
pub fn find_binary(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return bin.is_file().then(|| bin.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}
