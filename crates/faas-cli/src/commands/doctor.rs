//! `faas doctor`: what this machine can run, and what to do about what it cannot.
//!
//! Each check is a plain function returning a [`Check`]; the command prints one
//! line per check (or JSON) and exits non-zero when something the default
//! native sandbox needs is missing.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

/// `faas doctor` flags.
#[derive(Args)]
pub struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Docker daemon socket to probe [default: FAAS_DOCKER_HOST, DOCKER_HOST, /var/run/docker.sock].
    #[arg(long, env = "FAAS_DOCKER_HOST")]
    docker_host: Option<String>,
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Ok,
    /// Present but limited.
    Partial,
    /// Absent or broken.
    Missing,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do, when it is not `ok`.
    pub fix: Option<String>,
    /// Whether the default (native) sandbox needs it.
    pub required: bool,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
            required: false,
        }
    }

    fn partial(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            status: Status::Partial,
            fix: Some(fix.into()),
            ..Check::ok(name, detail)
        }
    }

    fn missing(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            status: Status::Missing,
            fix: Some(fix.into()),
            ..Check::ok(name, detail)
        }
    }

    fn required(mut self) -> Check {
        self.required = true;
        self
    }
}

/// Run every check and print the report.
pub async fn run(args: DoctorArgs) -> Result<ExitCode> {
    let docker_host = args
        .docker_host
        .or_else(|| std::env::var("DOCKER_HOST").ok());
    let checks = vec![
        check_root(),
        check_version("runc", "runc", &["--version"], "apt-get install runc").required(),
        check_cgroups().required(),
        check_user_namespaces(),
        check_seccomp().required(),
        check_version(
            "mmdebstrap",
            "mmdebstrap",
            &["--version"],
            "apt-get install mmdebstrap",
        )
        .required(),
        check_docker(docker_host.as_deref()).await,
        check_kvm(),
        check_version(
            "qemu",
            "qemu-system-x86_64",
            &["--version"],
            "apt-get install qemu-system-x86",
        ),
        check_firecracker(),
        check_version(
            "vhost-device-vsock",
            "vhost-device-vsock",
            &["--version"],
            "cargo install vhost-device-vsock",
        ),
        check_tee(),
    ];
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let mark = match c.status {
                Status::Ok => "ok     ",
                Status::Partial => "partial",
                Status::Missing => "missing",
            };
            print!("{mark}  {:<20} {}", c.name, c.detail);
            if let Some(fix) = &c.fix {
                print!("  -> {fix}");
            }
            println!();
        }
    }
    let broken = checks
        .iter()
        .any(|c| c.required && c.status == Status::Missing);
    Ok(if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn check_root() -> Check {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Check::ok("root", "running as root")
    } else {
        Check::missing(
            "root",
            "not root",
            "run `faas serve` as root: sandboxes need it",
        )
        .required()
    }
}

fn check_version(name: &'static str, bin: &str, args: &[&str], fix: &str) -> Check {
    match std::process::Command::new(bin).args(args).output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let first = text.lines().next().unwrap_or_default().trim().to_string();
            Check::ok(name, first)
        }
        Ok(out) => Check::missing(name, format!("{bin} failed ({})", out.status), fix),
        Err(_) => Check::missing(name, format!("{bin} not found"), fix),
    }
}

fn check_cgroups() -> Check {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let (v1, v2) = cgroup_versions(&mounts);
    let enabled =
        enabled_v1_controllers(&std::fs::read_to_string("/proc/cgroups").unwrap_or_default());
    let v2_controllers =
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let layout = match (v1, v2) {
        (true, true) => "hybrid (v1 controllers + v2 mount)",
        (true, false) => "v1",
        (false, true) => "v2 (unified)",
        (false, false) => "none mounted",
    };
    let mut have: Vec<String> = if v1 { enabled } else { Vec::new() };
    if !v1 {
        have.extend(v2_controllers.split_whitespace().map(str::to_string));
    }
    let needed = ["memory", "pids", "cpu"];
    let lacking: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|n| !have.iter().any(|h| h == n))
        .collect();
    let detail = format!("{layout}; controllers: {}", have.join(","));
    if lacking.is_empty() {
        Check::ok("cgroups", detail)
    } else {
        Check::missing(
            "cgroups",
            detail,
            format!("enable the {} controller(s)", lacking.join(", ")),
        )
    }
}

/// (v1 mounted, v2 mounted) from /proc/self/mounts.
fn cgroup_versions(mounts: &str) -> (bool, bool) {
    let fstype = |l: &str| l.split_whitespace().nth(2).unwrap_or_default().to_string();
    (
        mounts.lines().any(|l| fstype(l) == "cgroup"),
        mounts.lines().any(|l| fstype(l) == "cgroup2"),
    )
}

/// Enabled controllers from /proc/cgroups.
fn enabled_v1_controllers(proc_cgroups: &str) -> Vec<String> {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[3] == "1").then(|| f[0].to_string())
        })
        .collect()
}

fn check_user_namespaces() -> Check {
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match max {
        Some(n) if n > 0 => Check::ok("user namespaces", format!("available (max {n})")),
        Some(_) => Check::partial(
            "user namespaces",
            "disabled (max_user_namespaces = 0)",
            "sysctl user.max_user_namespaces=15000 to use [native] userns_base",
        ),
        None => Check::partial(
            "user namespaces",
            "not supported by this kernel",
            "the native sandbox runs without one (uid 1000, no capabilities)",
        ),
    }
}

fn check_seccomp() -> Check {
    match std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail") {
        Ok(a) if a.contains("errno") => {
            Check::ok("seccomp", format!("filters available ({})", a.trim()))
        }
        _ => Check::missing(
            "seccomp",
            "no seccomp filter support",
            "use a kernel with CONFIG_SECCOMP_FILTER",
        ),
    }
}

async fn check_docker(host: Option<&str>) -> Check {
    let connected = match host {
        Some(h) => bollard::Docker::connect_with_unix(h, 5, bollard::API_DEFAULT_VERSION),
        None => bollard::Docker::connect_with_local_defaults(),
    };
    let where_ = host.unwrap_or("/var/run/docker.sock").to_string();
    let fix = "apt-get install docker.io and start dockerd (./scripts/test starts one on /run/faas-docker.sock)";
    let docker = match connected {
        Ok(d) => d,
        Err(e) => return Check::missing("docker", format!("no daemon at {where_}: {e}"), fix),
    };
    match tokio::time::timeout(Duration::from_secs(5), docker.version()).await {
        Ok(Ok(v)) => Check::ok(
            "docker",
            format!("daemon {} at {where_}", v.version.unwrap_or_default()),
        ),
        Ok(Err(e)) => Check::missing("docker", format!("no daemon answers at {where_}: {e}"), fix),
        Err(_) => Check::missing("docker", format!("daemon at {where_} does not answer"), fix),
    }
}

/// How KVM looks on this machine.
#[derive(Debug, PartialEq, Eq)]
enum Kvm {
    /// VMX/SVM in the CPU and /dev/kvm opens.
    Hardware,
    /// /dev/kvm opens but the CPU offers no VMX/SVM: a paravirtual KVM such as PVM.
    Paravirtual,
    /// /dev/kvm exists but cannot be opened.
    Unusable(String),
    /// No /dev/kvm.
    Absent,
}

fn kvm_kind(
    cpu_flags: &str,
    modules: &[String],
    dev_open: Result<(), String>,
    dev_exists: bool,
) -> Kvm {
    if !dev_exists {
        return Kvm::Absent;
    }
    if let Err(e) = dev_open {
        return Kvm::Unusable(e);
    }
    let hw = cpu_flags
        .split_whitespace()
        .any(|f| f == "vmx" || f == "svm");
    let pvm = modules.iter().any(|m| m == "kvm_pvm");
    if hw && !pvm {
        Kvm::Hardware
    } else {
        Kvm::Paravirtual
    }
}

fn check_kvm() -> Check {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default()
        .to_string();
    let modules: Vec<String> = std::fs::read_dir("/sys/module")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let dev = Path::new("/dev/kvm");
    let open = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map(|_| ())
        .map_err(|e| e.to_string());
    match kvm_kind(&flags, &modules, open, dev.exists()) {
        Kvm::Hardware => Check::ok("kvm", "hardware virtualisation (VMX/SVM) via /dev/kvm"),
        Kvm::Paravirtual => Check::partial(
            "kvm",
            "paravirtual KVM (PVM or similar): stock guest kernels do not boot under it",
            "microVMs run under QEMU TCG (software emulation) here; use hardware KVM for speed",
        ),
        Kvm::Unusable(e) => Check::missing(
            "kvm",
            format!("/dev/kvm cannot be opened: {e}"),
            "run as root or fix /dev/kvm permissions",
        ),
        Kvm::Absent => Check::missing(
            "kvm",
            "no /dev/kvm",
            "microVMs fall back to QEMU TCG; load kvm_intel/kvm_amd for speed",
        ),
    }
}

fn check_firecracker() -> Check {
    let bin = std::env::var("FAAS_FC_BINARY_PATH").unwrap_or_else(|_| "firecracker".into());
    let mut c = check_version(
        "firecracker",
        &bin,
        &["--version"],
        "install a firecracker release binary and set FAAS_FC_BINARY_PATH (no Debian package exists)",
    );
    if c.status == Status::Missing {
        c.detail = format!("{bin} not runnable");
    }
    c
}

fn check_tee() -> Check {
    let exists = |p: &str| Path::new(p).exists();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut found = Vec::new();
    if read("/sys/module/kvm_intel/parameters/tdx").trim() == "Y" {
        found.push("TDX host");
    }
    if read("/sys/module/kvm_amd/parameters/sev_snp").trim() == "Y" {
        found.push("SEV-SNP host");
    }
    if exists("/dev/tdx_guest") {
        found.push("TDX guest");
    }
    if exists("/dev/sev-guest") {
        found.push("SEV-SNP guest");
    }
    let tsm = exists("/sys/kernel/config/tsm/report");
    if found.is_empty() {
        Check::partial(
            "tdx / sev-snp",
            "no TEE found (host or guest)",
            "confidential functions need a TDX or SEV-SNP machine; simulated attestation only",
        )
    } else if found.iter().any(|f| f.ends_with("guest")) && !tsm {
        Check::partial(
            "tdx / sev-snp",
            found.join(", "),
            "mount configfs (mount -t configfs none /sys/kernel/config) for configfs-tsm quotes",
        )
    } else {
        Check::ok("tdx / sev-snp", found.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_pvm_from_hardware_kvm() {
        let pvm = vec!["kvm".to_string(), "kvm_pvm".to_string()];
        let intel = vec!["kvm".to_string(), "kvm_intel".to_string()];
        assert_eq!(
            kvm_kind("flags : fpu hypervisor", &pvm, Ok(()), true),
            Kvm::Paravirtual
        );
        assert_eq!(
            kvm_kind("flags : fpu vmx", &intel, Ok(()), true),
            Kvm::Hardware
        );
        assert_eq!(kvm_kind("flags : fpu", &[], Ok(()), false), Kvm::Absent);
        assert!(matches!(
            kvm_kind("", &[], Err("EACCES".into()), true),
            Kvm::Unusable(_)
        ));
    }

    #[test]
    fn reads_cgroup_layout() {
        let mounts = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup_versions(mounts), (true, true));
        let proc = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t3\t1\t1\nmemory\t5\t1\t1\nrdma\t0\t1\t0\n";
        assert_eq!(enabled_v1_controllers(proc), vec!["cpu", "memory"]);
    }
}
