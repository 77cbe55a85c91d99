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
mod snapshot;
mod vm;
pub mod vsock;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use faas_common::protocol::{InitSpec, SERIAL_TRANSPORT_ARG};
use faas_common::Language;
use tokio::process::Child;

use crate::ephemeral::{self, TmpKind, TMPFS_MAX_MB};
use crate::instance::{AgentInstance, Backend};
use crate::{ExecutorError, Instance, InstanceSpec, Sandbox};
use faas_common::contract::{TMP_DISK_LABEL, TMP_MB_KERNEL_ARG};
pub use firecracker::{FirecrackerApi, FirecrackerConfig};
pub use qemu::{Accel, QemuConfig};
use snapshot::prune_snapshots;
pub(crate) use vm::tail;
use vm::SaveError;
pub use vm::{reseed_guest, VmBackend};

/// The guest's vsock context id (any value >= 3 works; each VM has its own
/// hybrid socket, so all guests can share it).
pub const GUEST_CID: u32 = 3;
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
    /// The VM's own writable `/tmp` disk (in its directory), attached after
    /// the read-only ones; `None`: the guest's `/tmp` is a tmpfs.
    pub scratch: Option<PathBuf>,
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

    fn cmdline(&self, memory_mb: u32, ephemeral_mb: u32) -> String {
        let mut c = format!(
            "console=ttyS0 reboot=k panic=-1 pci=off quiet faas.memory_mb={memory_mb} {TMP_MB_KERNEL_ARG}={ephemeral_mb}"
        );
        if let Some(khz) = self.tsc_khz {
            c.push_str(&format!(" tsc_early_khz={khz}"));
        }
        if self.snapshots() {
            c.push(' ');
            c.push_str(SERIAL_TRANSPORT_ARG);
        }
        c
    }

    /// The plan for `spec` in VM directory `dir`; its `/tmp` disk, if it
    /// needs one, is named but not made (`prepare` makes it).
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
        let scratch = match TmpKind::of(spec.ephemeral_mb, TMPFS_MAX_MB) {
            // In the guest's memory, charged to the function's cgroup.
            TmpKind::Memory(_) => None,
            TmpKind::Disk(_) => Some(dir.join("tmp.ext4")),
        };
        Ok(VmPlan {
            console_log: dir.join("console.log"),
            dir,
            kernel: self.images.kernel.clone(),
            initramfs: self.images.initramfs.clone(),
            cmdline: self.cmdline(spec.memory_mb, spec.ephemeral_mb),
            disks,
            scratch,
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
        let planned = async {
            let mut plan = self.plan(spec, dir).await?;
            if let Some(scratch) = &plan.scratch {
                match &restore_from {
                    // The disk as it was when the state was saved: the guest's
                    // memory and its filesystem must agree.
                    Some(state) => copy_sparse(&saved_scratch(state), scratch).await?,
                    None => {
                        ephemeral::make_image(scratch, spec.ephemeral_mb, TMP_DISK_LABEL).await?
                    }
                }
            }
            plan.restore_from = restore_from;
            Ok(plan)
        };
        match planned.await {
            Ok(plan) => Ok((backend, plan)),
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
            match instance
                .backend_mut()
                .save(
                    &state,
                    plan.scratch.as_deref().map(|s| (s, saved_scratch(&state))),
                )
                .await
            {
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
    /// an identical machine for the same function version. The `/tmp` disk's
    /// path is each VM's own; its size is in the command line.
    fn snapshot_path(&self, plan: &VmPlan, init: &InitSpec) -> PathBuf {
        use sha2::{Digest, Sha256};
        let key = serde_json::json!({
            "kernel": plan.kernel,
            "initramfs": plan.initramfs,
            "cmdline": plan.cmdline,
            "disks": plan.disks,
            "scratch": plan.scratch.is_some(),
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
        let (state, needs_disk) = {
            let plan = self.plan(&spec, self.config.run_dir.clone()).await?;
            (self.snapshot_path(&plan, init), plan.scratch.is_some())
        };
        // A state is only whole with its /tmp disk, if it has one.
        if state.is_file() && (!needs_disk || saved_scratch(&state).is_file()) {
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
                    let _ = tokio::fs::remove_file(saved_scratch(&state)).await;
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

/// Where the `/tmp` disk of the VM saved as `state` is kept: it belongs to
/// the state (the guest's memory holds that filesystem's caches), so every
/// restored VM starts from a copy of it, with what the handler's loading
/// wrote and nothing else.
fn saved_scratch(state: &Path) -> PathBuf {
    state.with_extension("tmpdisk")
}

/// Copy `from` to `to`, keeping holes (the disks are mostly holes).
async fn copy_sparse(from: &Path, to: &Path) -> Result<(), ExecutorError> {
    let (from, to) = (from.to_path_buf(), to.to_path_buf());
    tokio::task::spawn_blocking(move || {
        ephemeral::copy_sparse(&from, &to)
            .map_err(ExecutorError::io(format!("copy {}", from.display())))
    })
    .await
    .map_err(|e| ExecutorError::Start(format!("copy task: {e}")))?
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
