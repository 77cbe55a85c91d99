//! QEMU `microvm` as the VMM: KVM where hardware virtualisation really works,
//! TCG (software emulation) otherwise. Two agent channels:
//!
//! - [`Channel::Vsock`]: `vhost-device-vsock` beside each VM, so the host speaks
//!   the same hybrid vsock as with Firecracker;
//! - [`Channel::Serial`] (with snapshots, the default): two virtio-serial ports
//!   on Unix sockets QEMU listens on, and a QMP socket. QEMU 7.2 cannot migrate
//!   a vhost-user device, so only this channel lets a VM be saved and restored.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use faas_common::protocol::{AGENT_PORT_NAME, CONTROL_PORT_NAME};
use tokio::process::{Child, Command};

use super::{AgentEndpoint, Launched, SerialSockets, VmPlan, GUEST_CID};
use crate::ExecutorError;

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// Software emulation (always available, ~10x slower to boot).
    Tcg,
}

impl Accel {
    /// KVM when `/dev/kvm` opens and the CPU has VMX/SVM without a paravirtual
    /// KVM module (PVM: stock guest kernels do not boot under it); TCG otherwise.
    pub fn detect() -> Accel {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        let pvm = Path::new("/sys/module/kvm_pvm").exists();
        let opens = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if hw && !pvm && opens {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Settings of the QEMU VMM.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// `qemu-system-x86_64`.
    pub binary: PathBuf,
    /// `vhost-device-vsock` (crates.io; `scripts/lib.sh` installs it).
    pub vhost_vsock: PathBuf,
    /// `None`: [`Accel::detect`].
    pub accel: Option<Accel>,
    /// Save a VM once its handler is loaded and start further instances of the
    /// same function from that state (virtio-serial channel); `false`: boot
    /// every VM (vhost-user vsock channel).
    pub snapshots: bool,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            binary: PathBuf::from("qemu-system-x86_64"),
            vhost_vsock: PathBuf::from("vhost-device-vsock"),
            accel: None,
            snapshots: true,
        }
    }
}

/// How the host reaches the agent in a QEMU guest.
#[derive(Debug, Clone, Copy)]
pub enum Channel<'a> {
    /// vhost-user vsock, served by `vhost-device-vsock` on this socket.
    Vsock {
        /// The vhost-user socket QEMU connects to.
        vhost_socket: &'a Path,
    },
    /// virtio-serial ports `faas.agent` and `faas.control` and a QMP monitor,
    /// each on a Unix socket QEMU listens on. Migratable.
    Serial(&'a SerialSockets),
}

/// The QEMU command line for `plan` (memory shared through a memfd, which
/// vhost-user devices require; serial console to the plan's log file). With
/// `plan.restore_from`, QEMU waits for a saved state (`-incoming defer`).
pub fn qemu_args(plan: &VmPlan, accel: Accel, channel: Channel<'_>) -> Vec<String> {
    let mem = format!("{}M", plan.mem_mib);
    let mut args: Vec<String> = vec![
        "-M".into(),
        format!("microvm,accel={},memory-backend=mem", accel.as_str()),
        "-cpu".into(),
        match accel {
            Accel::Kvm => "host".into(),
            Accel::Tcg => "max".into(),
        },
        "-smp".into(),
        plan.vcpus.to_string(),
        "-m".into(),
        mem.clone(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        // A guest panic (panic=-1 reboots) ends the QEMU process instead of looping.
        "-no-reboot".into(),
        "-serial".into(),
        format!("file:{}", plan.console_log.display()),
        "-kernel".into(),
        plan.kernel.display().to_string(),
        "-append".into(),
        plan.cmdline.clone(),
    ];
    if let Some(initrd) = &plan.initramfs {
        args.extend(["-initrd".into(), initrd.display().to_string()]);
    }
    for (id, path) in &plan.disks {
        args.extend([
            "-drive".into(),
            format!(
                "id={id},file={},format=raw,if=none,readonly=on",
                path.display()
            ),
            "-device".into(),
            format!("virtio-blk-device,drive={id}"),
        ]);
    }
    if let Some(scratch) = &plan.scratch {
        // The VM's own /tmp: writable, and last, so the devices keep their
        // order whether a VM boots or loads a saved state.
        args.extend([
            "-drive".into(),
            format!("id=tmp,file={},format=raw,if=none", scratch.display()),
            "-device".into(),
            "virtio-blk-device,drive=tmp".into(),
        ]);
    }
    match channel {
        Channel::Vsock { vhost_socket } => args.extend([
            "-chardev".into(),
            format!("socket,id=vsk,path={}", vhost_socket.display()),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vsk".into(),
        ]),
        Channel::Serial(sockets) => {
            // Port 0 is reserved for a console: two ports of ours need three.
            args.extend(["-device".into(), "virtio-serial-device,max_ports=3".into()]);
            for (id, path, name) in [
                ("agent", &sockets.agent, AGENT_PORT_NAME),
                ("control", &sockets.control, CONTROL_PORT_NAME),
            ] {
                args.extend([
                    "-chardev".into(),
                    format!("socket,id={id},path={},server=on,wait=off", path.display()),
                    "-device".into(),
                    format!("virtserialport,chardev={id},name={name}"),
                ]);
            }
            args.extend([
                "-qmp".into(),
                format!("unix:{},server=on,wait=off", sockets.qmp.display()),
            ]);
            if plan.restore_from.is_some() {
                args.extend(["-incoming".into(), "defer".into()]);
            }
        }
    }
    args
}

/// Start QEMU for `plan` on the virtio-serial channel (no helper process).
async fn launch_serial(
    config: &QemuConfig,
    accel: Accel,
    plan: &VmPlan,
) -> Result<Launched, ExecutorError> {
    let sockets = SerialSockets {
        agent: plan.dir.join("agent.sock"),
        control: plan.dir.join("control.sock"),
        qmp: plan.dir.join("qmp.sock"),
    };
    let vmm = spawn_logged(
        Command::new(&config.binary).args(qemu_args(plan, accel, Channel::Serial(&sockets))),
        &plan.dir.join("vmm.log"),
        "qemu-system-x86_64 (apt-get install qemu-system-x86)",
    )?;
    Ok(Launched {
        vmm,
        helper: None,
        agent: AgentEndpoint::Serial(sockets),
    })
}

/// Start QEMU for `plan`: with snapshots on the virtio-serial channel, else
/// with `vhost-device-vsock` beside it.
pub async fn launch(config: &QemuConfig, plan: &VmPlan) -> Result<Launched, ExecutorError> {
    let accel = config.accel.unwrap_or_else(Accel::detect);
    if config.snapshots {
        return launch_serial(config, accel, plan).await;
    }
    if plan.restore_from.is_some() {
        return Err(ExecutorError::Start(
            "restoring needs the virtio-serial channel (snapshots on)".into(),
        ));
    }
    let vhost_socket = plan.dir.join("vhost.sock");
    let vsock_uds = plan.dir.join("vsock.sock");
    let mut helper = spawn_logged(
        Command::new(&config.vhost_vsock).arg("--vm").arg(format!(
            "guest-cid={GUEST_CID},socket={},uds-path={}",
            vhost_socket.display(),
            vsock_uds.display()
        )),
        &plan.dir.join("vhost-device-vsock.log"),
        "vhost-device-vsock (install it: cargo install vhost-device-vsock)",
    )?;
    // QEMU connects to this socket as a client: wait until the backend listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vhost_socket.exists() {
        if let Ok(Some(status)) = helper.try_wait() {
            return Err(ExecutorError::Start(format!(
                "vhost-device-vsock exited ({status}): {}",
                super::tail(&plan.dir.join("vhost-device-vsock.log"), 5)
            )));
        }
        if Instant::now() > deadline {
            return Err(ExecutorError::Start(
                "vhost-device-vsock did not create its socket within 10s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let vmm = spawn_logged(
        Command::new(&config.binary).args(qemu_args(
            plan,
            accel,
            Channel::Vsock {
                vhost_socket: &vhost_socket,
            },
        )),
        &plan.dir.join("vmm.log"),
        "qemu-system-x86_64 (apt-get install qemu-system-x86)",
    )?;
    Ok(Launched {
        vmm,
        helper: Some(helper),
        agent: AgentEndpoint::HybridVsock(vsock_uds),
    })
}

/// Spawn with stdout and stderr appended to `log`, killed if dropped.
pub(super) fn spawn_logged(
    cmd: &mut Command,
    log: &Path,
    what: &str,
) -> Result<Child, ExecutorError> {
    let out = std::fs::File::create(log)
        .map_err(ExecutorError::io(format!("create {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(ExecutorError::io("clone log handle"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ExecutorError::Start(format!("cannot run {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_shares_memory_and_attaches_read_only_disks() {
        let plan = VmPlan {
            dir: PathBuf::from("/run/vm"),
            kernel: PathBuf::from("/k/vmlinux"),
            initramfs: Some(PathBuf::from("/k/initramfs.cpio")),
            cmdline: "console=ttyS0".into(),
            disks: vec![
                ("root".into(), PathBuf::from("/d/root.ext4")),
                ("code".into(), PathBuf::from("/d/code.ext4")),
            ],
            scratch: Some(PathBuf::from("/run/vm/tmp.ext4")),
            mem_mib: 256,
            vcpus: 1,
            console_log: PathBuf::from("/run/vm/console.log"),
            restore_from: None,
        };
        let vsock = Channel::Vsock {
            vhost_socket: Path::new("/run/vm/vhost.sock"),
        };
        let args = qemu_args(&plan, Accel::Tcg, vsock).join(" ");
        assert!(args.contains("-M microvm,accel=tcg,memory-backend=mem"));
        assert!(args.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(args.contains("id=code,file=/d/code.ext4,format=raw,if=none,readonly=on"));
        // The /tmp disk is writable, and after the read-only ones.
        let tmp = "-drive id=tmp,file=/run/vm/tmp.ext4,format=raw,if=none -device";
        assert!(args.contains(tmp), "{args}");
        assert!(args.find("id=code").unwrap() < args.find(tmp).unwrap());
        assert!(args.contains("-chardev socket,id=vsk,path=/run/vm/vhost.sock"));
        assert!(args.contains("vhost-user-vsock-device,chardev=vsk"));
        assert!(args.contains("-no-reboot"));
        assert!(args.contains("-initrd /k/initramfs.cpio"));
        assert!(!args.contains("-incoming"));
        let kvm = qemu_args(&plan, Accel::Kvm, vsock).join(" ");
        assert!(kvm.contains("accel=kvm") && kvm.contains("-cpu host"));
    }

    #[test]
    fn serial_channel_is_migratable_and_restores_on_request() {
        let sockets = SerialSockets {
            agent: PathBuf::from("/run/vm/agent.sock"),
            control: PathBuf::from("/run/vm/control.sock"),
            qmp: PathBuf::from("/run/vm/qmp.sock"),
        };
        let mut plan = VmPlan {
            dir: PathBuf::from("/run/vm"),
            kernel: PathBuf::from("/k/vmlinux"),
            initramfs: None,
            cmdline: "console=ttyS0 faas.transport=serial".into(),
            disks: vec![("root".into(), PathBuf::from("/d/root.ext4"))],
            scratch: None,
            mem_mib: 256,
            vcpus: 1,
            console_log: PathBuf::from("/run/vm/console.log"),
            restore_from: None,
        };
        let args = qemu_args(&plan, Accel::Tcg, Channel::Serial(&sockets)).join(" ");
        assert!(!args.contains("vhost-user"), "vhost-user blocks migration");
        assert!(args.contains("-device virtio-serial-device,max_ports=3"));
        assert!(args.contains(
            "-chardev socket,id=agent,path=/run/vm/agent.sock,server=on,wait=off \
             -device virtserialport,chardev=agent,name=faas.agent"
        ));
        assert!(args.contains("virtserialport,chardev=control,name=faas.control"));
        assert!(args.contains("-qmp unix:/run/vm/qmp.sock,server=on,wait=off"));
        assert!(!args.contains("-incoming"));
        plan.restore_from = Some(PathBuf::from("/snap/x.state"));
        let args = qemu_args(&plan, Accel::Tcg, Channel::Serial(&sockets)).join(" ");
        assert!(args.ends_with("-incoming defer"));
    }
}
