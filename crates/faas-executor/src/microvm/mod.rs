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
//! - Snapshots (QEMU, [`QemuConfig::snapshots`]): the first VM of a function
//!   version is saved once its handler is loaded; later instances load that
//!   state into a fresh QEMU instead of booting, and get a reseed (fresh
//!   randomness, the current time) before they serve. The agent then talks
//!   over virtio-serial ports, which QEMU can migrate; vhost-user vsock it cannot.
//! - Memory: the VM gets `memory_mb` plus [`MicrovmConfig::overhead_mb`] for
//!   the guest kernel and agent; function processes run in a guest cgroup
//!   capped at `memory_mb`, so the OOM killer picks the function, never the
//!   agent, and its report on the console tells the host it was an OOM kill.

pub mod disk;
pub mod firecracker;
pub mod qemu;
pub mod qmp;
pub mod vsock;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use faas_common::protocol::{InitSpec, AGENT_VSOCK_PORT, SERIAL_TRANSPORT_ARG};
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
use faas_common::contract::{Reseed, CONTROL_VSOCK_PORT, RESEED_OK};
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

impl GuestImages {
    /// The guest for `runtimes`: `kernel` and `rootfs` where given (Firecracker's
    /// `FAAS_FC_KERNEL_PATH` / `FAAS_FC_ROOTFS_PATH`: one root disk for every
    /// runtime), else the kernel, initramfs and per-runtime disks `store`
    /// builds or has cached.
    pub async fn ensure(
        store: &faas_images::ImageStore,
        runtimes: &[faas_images::RuntimeImage],
        kernel: Option<PathBuf>,
        rootfs: Option<PathBuf>,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<GuestImages, faas_images::microvm::MicrovmImageError> {
        let (kernel, initramfs) = match kernel {
            Some(k) => (k, None),
            None => {
                let k = store.ensure_guest_kernel(false, progress).await?;
                (k.vmlinux, Some(k.initramfs))
            }
        };
        let mut disks = HashMap::new();
        for rt in runtimes {
            let disk = match &rootfs {
                Some(p) => p.clone(),
                None => store.ensure_guest_disk(rt, false, progress).await?.path,
            };
            disks.insert(rt.language, disk);
        }
        Ok(GuestImages {
            kernel,
            initramfs,
            disks,
        })
    }
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
    /// Where saved VM states live (one file per function version and VM shape).
    /// Emptied at start and shutdown: a snapshot is a cache of this run. The
    /// states hold the functions' memory (their environment too): the
    /// directory is made private to root.
    pub snapshot_dir: PathBuf,
    /// Most saved states kept; past it the least recently used go. Each is up
    /// to the VM's memory size.
    pub max_snapshots: usize,
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
            snapshot_dir: PathBuf::from("/run/faas/microvm-snapshots"),
            max_snapshots: 16,
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
    /// A saved state to load instead of booting (QEMU, virtio-serial channel).
    pub restore_from: Option<PathBuf>,
}

/// Unix sockets of a QEMU guest on the virtio-serial channel (QEMU listens).
#[derive(Debug, Clone)]
pub struct SerialSockets {
    /// The agent's port (frames).
    pub agent: PathBuf,
    /// The control port (reseed).
    pub control: PathBuf,
    /// The QMP monitor (pause, save, load, resume).
    pub qmp: PathBuf,
}

/// Where the host reaches a guest's agent.
#[derive(Debug, Clone)]
pub enum AgentEndpoint {
    /// A hybrid vsock socket (`CONNECT <port>` handshake): Firecracker, or QEMU
    /// with `vhost-device-vsock`.
    HybridVsock(PathBuf),
    /// QEMU's virtio-serial ports and monitor.
    Serial(SerialSockets),
}

/// A started VMM.
pub struct Launched {
    /// The VMM process.
    pub vmm: Child,
    /// `vhost-device-vsock`, under QEMU on the vsock channel.
    pub helper: Option<Child>,
    /// How to reach the agent.
    pub agent: AgentEndpoint,
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
            // With snapshots the agent channel is virtio-serial: no vsock helper.
            Vmm::Qemu(q) if q.snapshots => vec![(&q.binary, "apt-get install qemu-system-x86")],
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
        for dir in [&config.run_dir, &config.disk_cache, &config.snapshot_dir] {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(ExecutorError::io(format!("create {}", dir.display())))?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(
                &config.snapshot_dir,
                std::fs::Permissions::from_mode(0o700),
            )
            .await
            .map_err(ExecutorError::io("make the snapshot directory private"))?;
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

    /// Whether VMs are saved and restored (QEMU with snapshots on).
    fn snapshots(&self) -> bool {
        matches!(&self.config.vmm, Vmm::Qemu(q) if q.snapshots)
    }

    fn cmdline(&self, memory_mb: u32) -> String {
        let mut c =
            format!("console=ttyS0 reboot=k panic=-1 pci=off quiet faas.memory_mb={memory_mb}");
        if let Some(khz) = self.tsc_khz {
            c.push_str(&format!(" tsc_early_khz={khz}"));
        }
        if self.snapshots() {
            c.push(' ');
            c.push_str(SERIAL_TRANSPORT_ARG);
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
            restore_from: None,
        })
    }

    /// A new VM directory and the plan for `spec`; with `restore_from`, the VM
    /// loads that state instead of booting.
    async fn prepare(
        &self,
        spec: &InstanceSpec,
        restore_from: Option<PathBuf>,
    ) -> Result<(VmBackend, VmPlan), ExecutorError> {
        let id = format!("vm-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let dir = self.config.run_dir.join(&id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(ExecutorError::io(format!("create {}", dir.display())))?;
        let mut backend = VmBackend::new(id, dir.clone());
        match self.plan(spec, dir).await {
            Ok(mut plan) => {
                plan.restore_from = restore_from;
                Ok((backend, plan))
            }
            Err(e) => {
                backend.destroy().await;
                Err(e)
            }
        }
    }

    /// Start the VMM for `plan` and connect to its agent. A restored VM is
    /// loaded, resumed and reseeded first. On error the VM is destroyed.
    async fn launch(
        &self,
        backend: &mut VmBackend,
        plan: &VmPlan,
    ) -> Result<tokio::net::UnixStream, ExecutorError> {
        let started = Instant::now();
        let launched = match &self.config.vmm {
            Vmm::Qemu(q) => qemu::launch(q, plan).await,
            Vmm::Firecracker(f) => firecracker::launch(f, plan).await,
        };
        let launched = match launched {
            Ok(l) => l,
            Err(e) => {
                backend.destroy().await;
                return Err(e);
            }
        };
        backend.supervise(launched);
        let result = async {
            if let Some(state) = &plan.restore_from {
                backend.load(state, self.config.start_timeout).await?;
            }
            let stream = backend.wait_for_agent(self.config.start_timeout).await?;
            if plan.restore_from.is_some() {
                backend.reseed().await?;
            }
            Ok(stream)
        }
        .await;
        match result {
            Ok(stream) => {
                let how = if plan.restore_from.is_some() {
                    "restored"
                } else {
                    "booted"
                };
                tracing::info!(id = %backend.id, "microVM {how}, agent ready in {:?}", started.elapsed());
                Ok(stream)
            }
            Err(e) => {
                backend.destroy().await;
                Err(e)
            }
        }
    }

    /// Restore an instance from `state`, whose handler is loaded already.
    async fn restore(
        &self,
        spec: &InstanceSpec,
        state: PathBuf,
    ) -> Result<Box<dyn Instance>, ExecutorError> {
        let (mut backend, plan) = self.prepare(spec, Some(state)).await?;
        let stream = self.launch(&mut backend, &plan).await?;
        let instance = AgentInstance::start(
            backend,
            stream,
            spec.memory_mb,
            None,
            self.config.start_timeout,
        )
        .await?;
        Ok(Box::new(instance))
    }

    /// Boot an instance and load its handler; save it to `save_to` when given.
    async fn boot(
        &self,
        spec: InstanceSpec,
        save_to: Option<PathBuf>,
    ) -> Result<Box<dyn Instance>, ExecutorError> {
        let (mut backend, plan) = self.prepare(&spec, None).await?;
        let stream = self.launch(&mut backend, &plan).await?;
        let mut instance = AgentInstance::start(
            backend,
            stream,
            spec.memory_mb,
            spec.init,
            self.config.start_timeout,
        )
        .await?;
        if let Some(state) = save_to {
            let started = Instant::now();
            // A failed save costs only the speed-up: this VM serves either way,
            // unless it cannot be resumed, which makes it unusable.
            match instance.backend_mut().save(&state).await {
                Ok(()) => {
                    tracing::info!(
                        id = %instance.backend_mut().id,
                        "saved a snapshot in {:?}",
                        started.elapsed()
                    );
                    prune_snapshots(&self.config.snapshot_dir, self.config.max_snapshots).await;
                }
                Err(SaveError::Saving(e)) => {
                    tracing::warn!("could not save a snapshot: {e}")
                }
                Err(SaveError::Resuming(e)) => {
                    instance.destroy_backend().await;
                    return Err(e);
                }
            }
        }
        Ok(Box::new(instance))
    }

    /// The saved state for `plan` + `init`: every input that shapes the VM or
    /// the loaded handler is in the name, so a state is only ever loaded into
    /// an identical machine for the same function version.
    fn snapshot_path(&self, plan: &VmPlan, init: &InitSpec) -> PathBuf {
        use sha2::{Digest, Sha256};
        let key = serde_json::json!({
            "kernel": plan.kernel,
            "initramfs": plan.initramfs,
            "cmdline": plan.cmdline,
            "disks": plan.disks,
            "mem_mib": plan.mem_mib,
            "vcpus": plan.vcpus,
            "init": init,
        });
        let hash = hex::encode(&Sha256::digest(key.to_string().as_bytes())[..16]);
        self.config.snapshot_dir.join(format!("{hash}.state"))
    }
}

#[async_trait]
impl Sandbox for MicrovmSandbox {
    fn kind(&self) -> faas_common::SandboxKind {
        faas_common::SandboxKind::Microvm
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Box<dyn Instance>, ExecutorError> {
        let Some(init) = spec.init.as_ref().filter(|_| self.snapshots()) else {
            return self.boot(spec, None).await;
        };
        let state = {
            let plan = self.plan(&spec, self.config.run_dir.clone()).await?;
            self.snapshot_path(&plan, init)
        };
        if state.is_file() {
            // Recently used states are the ones pruning keeps.
            if let Ok(f) = std::fs::File::open(&state) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            match self.restore(&spec, state.clone()).await {
                Ok(instance) => return Ok(instance),
                Err(e) => {
                    // A state that does not load is dropped; this start boots.
                    tracing::warn!("restoring {} failed, booting: {e}", state.display());
                    let _ = tokio::fs::remove_file(&state).await;
                }
            }
        }
        self.boot(spec, Some(state)).await
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
        if let Ok(mut states) = tokio::fs::read_dir(&self.config.snapshot_dir).await {
            while let Ok(Some(state)) = states.next_entry().await {
                let _ = tokio::fs::remove_file(state.path()).await;
            }
        }
        Ok(removed)
    }
}

/// Ask the agent of a restored clone, through the hybrid vsock socket, to
/// reseed its RNG and set its clock (a snapshot's clones would otherwise share
/// one random stream and a stale time).
pub async fn reseed_guest(vsock_uds: &Path) -> Result<(), ExecutorError> {
    let stream = vsock::connect(vsock_uds, CONTROL_VSOCK_PORT, Duration::from_secs(5))
        .await
        .map_err(|e| ExecutorError::Start(format!("reseed: {e}")))?;
    reseed_over(stream).await
}

/// The reseed exchange ([`Reseed`]) on a connected control channel.
async fn reseed_over(mut stream: tokio::net::UnixStream) -> Result<(), ExecutorError> {
    let mut seed = [0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(ExecutorError::io("read host randomness"))?;
    let request = Reseed {
        unix_nanos: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64,
        seed,
    }
    .encode();
    let exchange = async {
        stream.write_all(&request).await?;
        let mut reply = [0u8; RESEED_OK.len()];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| ExecutorError::Start("reseed: no answer within 10s".into()))?
        .map_err(ExecutorError::io("reseed exchange"))?;
    if &reply == RESEED_OK {
        Ok(())
    } else {
        Err(ExecutorError::Start("guest refused to reseed".into()))
    }
}

/// Delete the least recently used states beyond `keep` (temporary files of
/// saves in progress are left alone).
async fn prune_snapshots(dir: &Path, keep: usize) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    let mut states = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "state") {
            if let Ok(modified) = entry.metadata().await.and_then(|m| m.modified()) {
                states.push((modified, path));
            }
        }
    }
    if states.len() <= keep {
        return;
    }
    states.sort();
    for (_, path) in &states[..states.len() - keep] {
        let _ = tokio::fs::remove_file(path).await;
    }
}

/// Why saving a VM failed.
enum SaveError {
    /// The state was not written; the VM runs on.
    Saving(ExecutorError),
    /// The VM could not be resumed afterwards and is unusable.
    Resuming(ExecutorError),
}

/// One VM: its directory and, through the supervisor task, its processes.
pub struct VmBackend {
    id: String,
    dir: PathBuf,
    endpoint: Option<AgentEndpoint>,
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
            endpoint: None,
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
            agent,
        } = launched;
        self.endpoint = Some(agent);
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

    /// Connect to the agent once it is up, within `timeout`.
    async fn wait_for_agent(
        &mut self,
        timeout: Duration,
    ) -> Result<tokio::net::UnixStream, ExecutorError> {
        let deadline = Instant::now() + timeout;
        let endpoint = self
            .endpoint
            .clone()
            .ok_or_else(|| ExecutorError::Start("VM not launched".into()))?;
        loop {
            if let Some(exit) = self.vmm_exit() {
                return Err(ExecutorError::Start(format!(
                    "{exit} during boot; console: {}",
                    tail(&self.console_log, 8)
                )));
            }
            match &endpoint {
                AgentEndpoint::HybridVsock(uds) => {
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
                }
                AgentEndpoint::Serial(sockets) => {
                    // QEMU holds what we write until the agent opens its port, so
                    // one connection and a ping that waits are enough.
                    if let Ok(stream) = tokio::net::UnixStream::connect(&sockets.agent).await {
                        let mut conn = crate::agent::AgentConn::new(stream);
                        let left = deadline.saturating_duration_since(Instant::now());
                        return match tokio::time::timeout(left, conn.ping()).await {
                            Ok(Ok(())) => Ok(conn.into_inner()),
                            Ok(Err(e)) => Err(ExecutorError::Start(format!(
                                "agent did not answer a ping ({e}); {}",
                                self.diagnose().await
                            ))),
                            Err(_) => Err(ExecutorError::Start(format!(
                                "agent not ready after {timeout:?}; console: {}",
                                tail(&self.console_log, 8)
                            ))),
                        };
                    }
                }
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

    fn serial_sockets(&self) -> Result<&SerialSockets, ExecutorError> {
        match &self.endpoint {
            Some(AgentEndpoint::Serial(s)) => Ok(s),
            _ => Err(ExecutorError::Start(
                "snapshots need the virtio-serial channel".into(),
            )),
        }
    }

    /// Load a saved state into this (just launched, `-incoming defer`) QEMU and resume it.
    async fn load(&mut self, state: &Path, timeout: Duration) -> Result<(), ExecutorError> {
        let qmp_socket = self.serial_sockets()?.qmp.clone();
        let fail = |e: qmp::QmpError| ExecutorError::Start(format!("restore: {e}"));
        let mut qmp = qmp::Qmp::connect(&qmp_socket, Duration::from_secs(10))
            .await
            .map_err(fail)?;
        qmp.load(state, timeout).await.map_err(fail)?;
        qmp.resume().await.map_err(fail)
    }

    /// Give a restored guest fresh randomness and the current time.
    async fn reseed(&mut self) -> Result<(), ExecutorError> {
        let control = self.serial_sockets()?.control.clone();
        let stream = tokio::net::UnixStream::connect(&control)
            .await
            .map_err(ExecutorError::io("connect to the control port"))?;
        reseed_over(stream).await
    }

    /// Pause the VM, write its state to `state` (atomically: a temporary file
    /// renamed into place) and resume it.
    async fn save(&mut self, state: &Path) -> Result<(), SaveError> {
        let qmp_socket = self
            .serial_sockets()
            .map_err(SaveError::Saving)?
            .qmp
            .clone();
        let mut qmp = qmp::Qmp::connect(&qmp_socket, Duration::from_secs(10))
            .await
            .map_err(|e| SaveError::Saving(ExecutorError::Start(format!("snapshot: {e}"))))?;
        let tmp = state.with_extension(format!("{}.tmp", self.id));
        let saved = qmp.save(&tmp, Duration::from_secs(120)).await;
        // Resume whatever happened: a paused VM would time out its first call.
        qmp.resume()
            .await
            .map_err(|e| SaveError::Resuming(ExecutorError::Start(format!("resume: {e}"))))?;
        match saved {
            Ok(()) => tokio::fs::rename(&tmp, state)
                .await
                .map_err(|e| SaveError::Saving(ExecutorError::io("store the snapshot")(e))),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(SaveError::Saving(ExecutorError::Start(format!(
                    "snapshot: {e}"
                ))))
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pruning_keeps_the_most_recently_used_states() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::time::SystemTime::now() - Duration::from_secs(100);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let path = dir.path().join(format!("{name}.state"));
            let f = std::fs::File::create(&path).unwrap();
            f.set_modified(base + Duration::from_secs(i as u64 * 10))
                .unwrap();
        }
        std::fs::File::create(dir.path().join("e.vm-1.tmp"))
            .unwrap()
            .set_modified(base)
            .unwrap();
        prune_snapshots(dir.path(), 2).await;
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["c.state", "d.state", "e.vm-1.tmp"]);
    }
}
