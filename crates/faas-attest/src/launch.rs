//! QEMU arguments for launching a worker as an Intel TDX trust domain.
//!
//! Host requirements (see `docs/attestation.md`): a TDX-enabled host kernel and KVM
//! (`kvm_intel.tdx=1`), QEMU >= 10.1, TDVF firmware (OVMF built with TDX support), and for
//! quotes a Quote Generation Service (QGS) reachable by QEMU.

use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::json;

/// Where QEMU forwards the guest's GetQuote requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QgsSocket {
    /// QGS listening on vsock (the usual host setup: CID 2, port 4050).
    Vsock {
        /// Context id (2 is the host).
        cid: u32,
        /// Port.
        port: u32,
    },
    /// QGS listening on a Unix socket (e.g. `/var/run/tdx-qgs/qgs.socket`).
    Unix(PathBuf),
}

/// Settings for one trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxLaunchConfig {
    /// QOM id of the `tdx-guest` object; also prefixes the memory backend's id.
    pub id: String,
    /// TDVF firmware image, loaded with `-bios` (TDX has no read-only pflash).
    pub firmware: PathBuf,
    /// Guest memory in MiB (one private-memory-capable RAM backend of this size).
    pub memory_mib: u64,
    /// Quote generation service; without it the guest cannot obtain quotes.
    pub quote_generation_socket: Option<QgsSocket>,
    /// MRCONFIGID (48 bytes, e.g. SHA-384 of the function bundle the TD will run); it is
    /// measured into every quote and can be pinned by `TdxPolicy::mr_config_id`.
    pub mr_config_id: Option<[u8; 48]>,
}

impl TdxLaunchConfig {
    /// A TD with id `tdx0`, the given firmware and memory, QGS on vsock CID 2 port 4050,
    /// and no MRCONFIGID.
    pub fn new(firmware: impl Into<PathBuf>, memory_mib: u64) -> Self {
        Self {
            id: "tdx0".into(),
            firmware: firmware.into(),
            memory_mib,
            quote_generation_socket: Some(QgsSocket::Vsock { cid: 2, port: 4050 }),
            mr_config_id: None,
        }
    }
}

/// Settings that cannot produce a working TD.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid TDX launch settings: {0}")]
pub struct LaunchError(String);

/// The QEMU arguments that make a VM a TD: KVM with the host CPU model, a `tdx-guest`
/// object (SEPT_VE_DISABLE on, as Linux guests and dcap-qvl's checks require; debug off),
/// q35 with a split IRQ chip and the TD as confidential-guest-support, a RAM backend for
/// guest memory, and TDVF via `-bios`. The caller adds devices, kernel and disks, and must
/// not pass its own `-machine`, `-cpu`, `-accel`, `-m` or `-bios`.
pub fn tdx_qemu_args(config: &TdxLaunchConfig) -> Result<Vec<String>, LaunchError> {
    let id = &config.id;
    let id_ok = id.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !id_ok {
        return Err(LaunchError(format!(
            "id {id:?} must start with a letter and hold only letters, digits, '-', '_', '.'"
        )));
    }
    if config.memory_mib == 0 {
        return Err(LaunchError("memory_mib must be positive".into()));
    }
    if config.firmware.as_os_str().is_empty() {
        return Err(LaunchError("firmware path is empty".into()));
    }
    let firmware = config
        .firmware
        .to_str()
        .ok_or_else(|| LaunchError("firmware path is not UTF-8".into()))?;

    let mut object = json!({
        "qom-type": "tdx-guest",
        "id": id,
        "sept-ve-disable": true,
    });
    if let Some(mr) = &config.mr_config_id {
        object["mrconfigid"] = json!(STANDARD.encode(mr));
    }
    match &config.quote_generation_socket {
        Some(QgsSocket::Vsock { cid, port }) => {
            object["quote-generation-socket"] =
                json!({"type": "vsock", "cid": cid.to_string(), "port": port.to_string()});
        }
        Some(QgsSocket::Unix(path)) => {
            let path = path
                .to_str()
                .ok_or_else(|| LaunchError("QGS socket path is not UTF-8".into()))?;
            object["quote-generation-socket"] = json!({"type": "unix", "path": path});
        }
        None => {}
    }

    let memory = format!("{}M", config.memory_mib);
    let backend = format!("{id}-mem");
    Ok(vec![
        "-accel".into(),
        "kvm".into(),
        "-cpu".into(),
        "host".into(),
        "-object".into(),
        object.to_string(),
        "-object".into(),
        format!("memory-backend-ram,id={backend},size={memory}"),
        "-machine".into(),
        format!(
            "q35,kernel-irqchip=split,confidential-guest-support={id},memory-backend={backend},hpet=off"
        ),
        "-m".into(),
        memory,
        "-bios".into(),
        firmware.into(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_td_argv() {
        let args =
            tdx_qemu_args(&TdxLaunchConfig::new("/usr/share/ovmf/OVMF.tdx.fd", 2048)).unwrap();
        let expected = [
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-object",
            "<tdx-guest JSON>",
            "-object",
            "memory-backend-ram,id=tdx0-mem,size=2048M",
            "-machine",
            "q35,kernel-irqchip=split,confidential-guest-support=tdx0,memory-backend=tdx0-mem,hpet=off",
            "-m",
            "2048M",
            "-bios",
            "/usr/share/ovmf/OVMF.tdx.fd",
        ];
        assert_eq!(args.len(), expected.len());
        for (i, (arg, want)) in args.iter().zip(expected).enumerate() {
            if i != 5 {
                assert_eq!(arg, want, "argument {i}");
            }
        }
        let object: serde_json::Value = serde_json::from_str(&args[5]).unwrap();
        assert_eq!(
            object,
            json!({
                "qom-type": "tdx-guest",
                "id": "tdx0",
                "sept-ve-disable": true,
                "quote-generation-socket": {"type": "vsock", "cid": "2", "port": "4050"},
            })
        );
    }

    #[test]
    fn unix_qgs_and_mr_config_id() {
        let mut config = TdxLaunchConfig::new("/fw/TDVF.fd", 512);
        config.id = "td-fn1".into();
        config.quote_generation_socket = Some(QgsSocket::Unix("/run/qgs \"x\".sock".into()));
        config.mr_config_id = Some([0xAB; 48]);
        let args = tdx_qemu_args(&config).unwrap();
        let object: serde_json::Value = serde_json::from_str(&args[5]).unwrap();
        assert_eq!(object["id"], "td-fn1");
        assert_eq!(object["sept-ve-disable"], true);
        assert_eq!(object["quote-generation-socket"]["type"], "unix");
        assert_eq!(
            object["quote-generation-socket"]["path"],
            "/run/qgs \"x\".sock"
        );
        assert_eq!(
            STANDARD
                .decode(object["mrconfigid"].as_str().unwrap())
                .unwrap(),
            [0xAB; 48]
        );
        assert!(object.get("debug").is_none());
        assert_eq!(args[7], "memory-backend-ram,id=td-fn1-mem,size=512M");
        assert!(args[9].contains("confidential-guest-support=td-fn1,"));
        assert!(args[9].contains("kernel-irqchip=split"));
    }

    #[test]
    fn refuses_bad_settings() {
        let mut c = TdxLaunchConfig::new("/fw", 0);
        assert!(tdx_qemu_args(&c).is_err());
        c.memory_mib = 256;
        c.id = "0bad,id".into();
        assert!(tdx_qemu_args(&c).is_err());
        c.id = "tdx0".into();
        c.firmware = PathBuf::new();
        assert!(tdx_qemu_args(&c).is_err());
    }
}
