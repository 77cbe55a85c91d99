//! What a node runs with: the sandbox kind and where its state, images and
//! guest agent live.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The sandbox kind functions run in (`FAAS_EXECUTOR_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorType {
    /// Linux namespaces + cgroups + seccomp through runc.
    Native,
    /// Containers of a Docker daemon.
    Docker,
    /// MicroVMs: QEMU `microvm`, or Firecracker when `FAAS_FC_BINARY_PATH` is set.
    Microvm,
    /// MicroVMs on Firecracker (the original plan's name); needs `FAAS_FC_BINARY_PATH`.
    Firecracker,
}

impl ExecutorType {
    /// The name used in `FAAS_EXECUTOR_TYPE` and by the platform (`native`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorType::Native => "native",
            ExecutorType::Docker => "docker",
            ExecutorType::Microvm => "microvm",
            ExecutorType::Firecracker => "firecracker",
        }
    }
}

impl fmt::Display for ExecutorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An executor type name that is not one of `native`, `docker`, `microvm`, `firecracker`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown executor type {0:?} (expected native, docker, microvm or firecracker)")]
pub struct UnknownExecutorType(pub String);

impl FromStr for ExecutorType {
    type Err = UnknownExecutorType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(ExecutorType::Native),
            "docker" => Ok(ExecutorType::Docker),
            "microvm" => Ok(ExecutorType::Microvm),
            "firecracker" => Ok(ExecutorType::Firecracker),
            other => Err(UnknownExecutorType(other.to_string())),
        }
    }
}

/// Firecracker paths of the original plan (`FAAS_FC_BINARY_PATH`,
/// `FAAS_FC_KERNEL_PATH`, `FAAS_FC_ROOTFS_PATH`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirecrackerPaths {
    /// The `firecracker` binary.
    pub binary: Option<PathBuf>,
    /// Guest kernel (vmlinux).
    pub kernel: Option<PathBuf>,
    /// Guest root filesystem image.
    pub rootfs: Option<PathBuf>,
}

/// Everything [`crate::FaaSContext::start`] needs to build the platform.
#[derive(Debug, Clone)]
pub struct FaaSConfig {
    /// Sandbox kind every function runs in.
    pub executor: ExecutorType,
    /// Firecracker paths for the microVM sandbox.
    pub firecracker: FirecrackerPaths,
    /// Platform state: database, code, dependency layers, sandbox bundles.
    pub data_dir: PathBuf,
    /// Runtime image cache (built on first use; `faas images build` prebuilds it).
    pub images_dir: PathBuf,
    /// The `faas-guest-agent` binary put into every image.
    pub agent_path: PathBuf,
    /// Parent cgroup of native sandbox instances.
    pub cgroup_parent: String,
    /// The `runc` binary (native sandbox).
    pub runc: PathBuf,
    /// Docker daemon socket, `unix:///path` (Docker sandbox); `None`: `DOCKER_HOST`
    /// or `/var/run/docker.sock`.
    pub docker_host: Option<String>,
}

impl FaaSConfig {
    /// A native-sandbox configuration with the platform's defaults for
    /// everything but the three paths.
    pub fn native(data_dir: PathBuf, images_dir: PathBuf, agent_path: PathBuf) -> Self {
        FaaSConfig {
            executor: ExecutorType::Native,
            firecracker: FirecrackerPaths::default(),
            data_dir,
            images_dir,
            agent_path,
            cgroup_parent: "faas".into(),
            runc: PathBuf::from("runc"),
            docker_host: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_types_round_trip_and_unknown_ones_are_named() {
        for kind in [
            ExecutorType::Native,
            ExecutorType::Docker,
            ExecutorType::Microvm,
            ExecutorType::Firecracker,
        ] {
            assert_eq!(kind.as_str().parse::<ExecutorType>().unwrap(), kind);
        }
        let err = "kvm".parse::<ExecutorType>().unwrap_err();
        assert!(err.to_string().contains("\"kvm\""), "{err}");
    }
}
