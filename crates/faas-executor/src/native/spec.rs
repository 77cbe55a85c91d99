//! The OCI runtime spec (`config.json`) of one native sandbox instance.
//!
//! Every security property of the native sandbox is decided here, in one place:
//! namespaces (a user namespace included, mapping the sandbox's ids onto a
//! host id range of its own), read-only root, mounts, cgroup limits,
//! capabilities (none), no-new-privileges, the seccomp allowlist, the
//! non-root user.

use std::path::Path;

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use faas_common::contract::{
    AGENT_PATH, AGENT_SOCKET_NAME, FUNCTION_UID, GUEST_CODE_DIR, GUEST_DEPS_DIR, GUEST_SOCKET_DIR,
};

use super::NativeConfig;
use crate::ids::SLOT_SIZE;
use crate::ExecutorError;

/// Paths hidden from the sandbox (as Docker does).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths the sandbox may read but not write.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Inputs that vary per instance.
pub struct InstanceMounts<'a> {
    /// Runtime root filesystem (shared, read-only).
    pub rootfs: &'a Path,
    /// Host directory bound read-only at [`GUEST_SOCKET_DIR`].
    pub socket_dir: &'a Path,
    /// Function code, bound read-only at [`GUEST_CODE_DIR`].
    pub code_dir: Option<&'a Path>,
    /// Dependencies, bound read-only at [`GUEST_DEPS_DIR`].
    pub deps_dir: Option<&'a Path>,
    /// The instance's `/etc/hosts` (its pinned egress names), bound read-only.
    pub hosts_file: Option<&'a Path>,
    /// `code_dir` and `deps_dir` are empty slots of a pre-started instance:
    /// bound as slaves of the host's mount, so the views mounted there when
    /// it is specialised show inside.
    pub slots: bool,
    /// Its `/tmp`.
    pub tmp: Tmp<'a>,
}

/// An instance's `/tmp`.
#[derive(Debug, Clone, Copy)]
pub enum Tmp<'a> {
    /// A tmpfs of this many MiB, charged to the memory cgroup (so capped at
    /// the memory limit).
    Memory(u32),
    /// A host directory (the mount point of the instance's own disk), bound
    /// read-write.
    Disk(&'a Path),
}

/// Who the instance is on the host.
#[derive(Debug, Clone, Copy)]
pub struct InstanceIds {
    /// First host id of the instance's own range.
    pub host_base: u32,
    /// Whether the range is mapped through a user namespace (sandbox uid
    /// [`FUNCTION_UID`]); without one the function runs as host uid
    /// `host_base + FUNCTION_UID` directly.
    pub user_namespace: bool,
}

/// Build the spec for instance `id`.
pub fn build(
    config: &NativeConfig,
    id: &str,
    memory_mb: u32,
    mounts: &InstanceMounts<'_>,
    ids: InstanceIds,
) -> Result<Spec, ExecutorError> {
    let memory = u64::from(memory_mb) * 1024 * 1024;
    let tmp = match mounts.tmp {
        // Memory-backed and charged to the cgroup, so it can never exceed the limit.
        Tmp::Memory(mb) => json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", format!("size={}m", mb.min(memory_mb))]}),
        Tmp::Disk(dir) => json!({"destination": "/tmp", "type": "bind", "source": dir,
            "options": ["rbind", "rw", "nosuid", "nodev"]}),
    };
    let mut mount_list = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=16m"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        tmp,
        json!({"destination": GUEST_SOCKET_DIR, "type": "bind",
               "source": mounts.socket_dir, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}),
    ];
    let ro_bind = |dest: &str, src: &Path| {
        json!({"destination": dest, "type": "bind", "source": src,
               "options": ["rbind", "ro", "nosuid", "nodev"]})
    };
    let slot_bind = |dest: &str, src: &Path| {
        json!({"destination": dest, "type": "bind", "source": src,
               "options": ["rbind", "ro", "nosuid", "nodev", "rslave"]})
    };
    let code_bind = if mounts.slots { slot_bind } else { ro_bind };
    if let Some(code) = mounts.code_dir {
        mount_list.push(code_bind(GUEST_CODE_DIR, code));
    }
    if let Some(deps) = mounts.deps_dir {
        mount_list.push(code_bind(GUEST_DEPS_DIR, deps));
    }
    if let Some(hosts) = mounts.hosts_file {
        mount_list.push(ro_bind("/etc/hosts", hosts));
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "network"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    let mut linux = json!({
        "cgroupsPath": format!("/{}/{}", config.cgroup_parent, id),
        "resources": {
            "devices": [{"allow": false, "access": "rwm"}],
            "memory": memory_resources(memory, config.swap_accounting),
            "cpu": {"quota": config.cpu_quota_us, "period": 100_000u64},
            "pids": {"limit": config.pids_limit},
        },
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
        "seccomp": faas_common::sandbox::oci_profile(),
    });
    let uid = if ids.user_namespace {
        namespaces.push(json!({"type": "user"}));
        let map = json!([{"containerID": 0, "hostID": ids.host_base, "size": SLOT_SIZE}]);
        linux["uidMappings"] = map.clone();
        linux["gidMappings"] = map;
        FUNCTION_UID
    } else {
        ids.host_base + FUNCTION_UID
    };
    linux["namespaces"] = Value::Array(namespaces);

    let env: Vec<String> = crate::base_env()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let spec = json!({
        "ociVersion": "1.0.2",
        "root": {"path": mounts.rootfs, "readonly": true},
        "hostname": "faas",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": uid},
            "args": [
                AGENT_PATH,
                "--connect",
                format!("unix:{GUEST_SOCKET_DIR}/{AGENT_SOCKET_NAME}"),
            ],
            "env": env,
            "cwd": "/tmp",
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024u64, "soft": 1024u64},
                        {"type": "RLIMIT_CORE", "hard": 0u64, "soft": 0u64}],
            "noNewPrivileges": true,
        },
        "mounts": mount_list,
        "linux": linux,
    });
    serde_json::from_value(spec).map_err(|e| ExecutorError::Start(format!("invalid OCI spec: {e}")))
}

fn memory_resources(limit: u64, swap_accounting: bool) -> Value {
    if swap_accounting {
        // memory+swap equal to memory: the function cannot swap its way past the limit.
        json!({"limit": limit, "swap": limit})
    } else {
        json!({"limit": limit})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(config: &NativeConfig) -> Spec {
        build(
            config,
            "t1",
            128,
            &InstanceMounts {
                rootfs: Path::new("/images/python/rootfs"),
                socket_dir: Path::new("/run/x/sock"),
                code_dir: Some(Path::new("/code/abc")),
                deps_dir: None,
                hosts_file: None,
                slots: false,
                tmp: Tmp::Memory(64),
            },
            IDS,
        )
        .unwrap()
    }

    const IDS: InstanceIds = InstanceIds {
        host_base: 1 << 30,
        user_namespace: true,
    };

    #[test]
    fn locks_the_sandbox_down() {
        let s = spec(&NativeConfig::default());
        assert!(s.root().as_ref().unwrap().readonly().unwrap());
        let p = s.process().as_ref().unwrap();
        assert_ne!(p.user().uid(), 0, "must not run as root");
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap();
        assert!(caps.bounding().as_ref().unwrap().is_empty());
        assert!(caps.effective().as_ref().unwrap().is_empty());
        let linux = s.linux().as_ref().unwrap();
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(
            res.memory().as_ref().unwrap().limit(),
            Some(128 * 1024 * 1024)
        );
        assert!(res.pids().as_ref().unwrap().limit() > 0);
        let ns: Vec<String> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| format!("{:?}", n.typ()))
            .collect();
        for want in ["Pid", "Network", "Mount", "Ipc", "Uts"] {
            assert!(
                ns.iter().any(|n| n == want),
                "{want} namespace missing: {ns:?}"
            );
        }
        let sc = linux.seccomp().as_ref().unwrap();
        assert_eq!(
            format!("{:?}", sc.default_action()),
            "ScmpActErrno",
            "an allowlist: what is not listed is refused"
        );
        let allowed: Vec<&String> = sc
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| format!("{:?}", r.action()) == "ScmpActAllow" && r.args().is_none())
            .flat_map(|r| r.names())
            .collect();
        for call in [
            "mount",
            "ptrace",
            "kexec_load",
            "bpf",
            "keyctl",
            "unshare",
            "clone",
        ] {
            assert!(
                !allowed.iter().any(|n| *n == call),
                "{call} allowed unconditionally"
            );
        }
        let mounts = s.mounts().as_ref().unwrap();
        let sock = mounts
            .iter()
            .find(|m| m.destination() == Path::new(GUEST_SOCKET_DIR))
            .unwrap();
        assert!(
            sock.options().as_ref().unwrap().contains(&"ro".to_string()),
            "the function must not write where the agent socket is"
        );
    }

    #[test]
    fn tmp_never_exceeds_memory_and_code_is_read_only() {
        let s = build(
            &NativeConfig::default(),
            "t2",
            32,
            &InstanceMounts {
                code_dir: Some(Path::new("/c")),
                deps_dir: Some(Path::new("/d")),
                ..bare(Tmp::Memory(64))
            },
            IDS,
        )
        .unwrap();
        let mounts = s.mounts().as_ref().unwrap();
        let tmp = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/tmp"))
            .unwrap();
        assert!(tmp
            .options()
            .as_ref()
            .unwrap()
            .contains(&"size=32m".to_string()));
        for dest in [GUEST_CODE_DIR, GUEST_DEPS_DIR] {
            let m = mounts
                .iter()
                .find(|m| m.destination() == Path::new(dest))
                .unwrap();
            assert!(m.options().as_ref().unwrap().contains(&"ro".to_string()));
        }
    }

    /// Mounts with nothing of a function's but `tmp`.
    fn bare(tmp: Tmp<'static>) -> InstanceMounts<'static> {
        InstanceMounts {
            rootfs: Path::new("/r"),
            socket_dir: Path::new("/s"),
            code_dir: None,
            deps_dir: None,
            hosts_file: None,
            slots: false,
            tmp,
        }
    }

    #[test]
    fn a_disk_tmp_is_bound_writable_without_devices_or_setuid() {
        let s = build(
            &NativeConfig::default(),
            "t4",
            128,
            &bare(Tmp::Disk(Path::new("/data/run/ephemeral/native/t4"))),
            IDS,
        )
        .unwrap();
        let tmp = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/tmp"))
            .unwrap()
            .clone();
        assert_eq!(tmp.typ().as_deref(), Some("bind"));
        assert_eq!(
            tmp.source().as_deref(),
            Some(Path::new("/data/run/ephemeral/native/t4"))
        );
        let options = tmp.options().clone().unwrap();
        for want in ["rw", "nosuid", "nodev"] {
            assert!(options.contains(&want.to_string()), "{options:?}");
        }
    }

    #[test]
    fn user_namespace_maps_ids() {
        let s = spec(&NativeConfig::default());
        let linux = s.linux().as_ref().unwrap();
        assert_eq!(linux.uid_mappings().as_ref().unwrap()[0].host_id(), 1 << 30);
        assert_eq!(s.process().as_ref().unwrap().user().uid(), FUNCTION_UID);
        // Without a user namespace the function runs as a host uid of its own range.
        let plain = build(
            &NativeConfig::default(),
            "t3",
            64,
            &bare(Tmp::Memory(64)),
            InstanceIds {
                user_namespace: false,
                ..IDS
            },
        )
        .unwrap();
        assert_eq!(
            plain.process().as_ref().unwrap().user().uid(),
            (1 << 30) + FUNCTION_UID
        );
        assert!(plain.linux().as_ref().unwrap().uid_mappings().is_none());
    }
}
