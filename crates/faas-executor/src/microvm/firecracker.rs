//! Firecracker as the VMM: a real `firecracker` binary configured over its API
//! socket (HTTP/1.1 on a Unix socket). Request paths and body fields follow
//! Firecracker's published API specification,
//! `src/firecracker/swagger/firecracker.yaml` in firecracker-microvm/firecracker
//! (definitions `BootSource`, `Drive`, `MachineConfiguration`, `Vsock`,
//! `InstanceActionInfo`, `Vm`, `SnapshotCreateParams`, `SnapshotLoadParams`,
//! `MemoryBackend`); every successful call answers 204 No Content.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tokio::process::Command;

use super::{AgentEndpoint, Launched, VmPlan, GUEST_CID};
use crate::ExecutorError;

/// Settings of the Firecracker VMM.
#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    /// The `firecracker` binary (`FAAS_FC_BINARY_PATH`).
    pub binary: PathBuf,
}

/// A Firecracker API error: the call, the HTTP status and Firecracker's `fault_message`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API socket could not be reached or the exchange broke.
    #[error("firecracker API {call}: {reason}")]
    Transport {
        /// `PUT /boot-source`, ...
        call: String,
        /// What failed.
        reason: String,
    },
    /// Firecracker refused the request.
    #[error("firecracker API {call} answered {status}: {fault}")]
    Refused {
        /// `PUT /boot-source`, ...
        call: String,
        /// HTTP status.
        status: u16,
        /// Body of the answer (`{"fault_message": ...}`).
        fault: String,
    },
}

impl From<ApiError> for ExecutorError {
    fn from(e: ApiError) -> Self {
        ExecutorError::Start(e.to_string())
    }
}

/// A client of one Firecracker API socket.
#[derive(Debug, Clone)]
pub struct FirecrackerApi {
    socket: PathBuf,
}

impl FirecrackerApi {
    /// A client for the API socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        FirecrackerApi {
            socket: socket.into(),
        }
    }

    /// One request on a fresh connection (Firecracker serves them one at a time anyway).
    pub async fn call(&self, method: Method, path: &str, body: &Value) -> Result<(), ApiError> {
        let call = format!("{method} {path}");
        let transport = |reason: String| ApiError::Transport {
            call: call.clone(),
            reason,
        };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| transport(format!("connect {}: {e}", self.socket.display())))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| transport(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let req = Request::builder()
            .method(method.clone())
            // Origin form (`PUT /boot-source HTTP/1.1`), as Firecracker's server expects.
            .uri(path)
            .header("Host", "localhost")
            .header("Accept", "application/json")
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| transport(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        driver.abort();
        if status.is_success() {
            Ok(())
        } else {
            Err(ApiError::Refused {
                call,
                status: status.as_u16(),
                fault: String::from_utf8_lossy(&bytes).into_owned(),
            })
        }
    }

    /// Configure and start a VM: boot source, drives (the first is the root
    /// device), machine config, vsock, then `InstanceStart`.
    pub async fn boot(&self, plan: &VmPlan, vsock_uds: &Path) -> Result<(), ApiError> {
        for (method, path, body) in boot_requests(plan, vsock_uds) {
            self.call(method, &path, &body).await?;
        }
        Ok(())
    }

    /// `PATCH /vm {"state": "Paused"}`.
    pub async fn pause(&self) -> Result<(), ApiError> {
        self.call(Method::PATCH, "/vm", &json!({"state": "Paused"}))
            .await
    }

    /// `PATCH /vm {"state": "Resumed"}`.
    pub async fn resume(&self) -> Result<(), ApiError> {
        self.call(Method::PATCH, "/vm", &json!({"state": "Resumed"}))
            .await
    }

    /// `PUT /snapshot/create`: a full snapshot of a paused VM.
    pub async fn create_snapshot(&self, state: &Path, memory: &Path) -> Result<(), ApiError> {
        self.call(
            Method::PUT,
            "/snapshot/create",
            &json!({
                "snapshot_type": "Full",
                "snapshot_path": state.display().to_string(),
                "mem_file_path": memory.display().to_string(),
            }),
        )
        .await
    }

    /// `PUT /snapshot/load` into a fresh Firecracker process, resuming at once.
    /// The vsock device comes back on the socket path recorded in the snapshot,
    /// so clones must run in their own mount namespace or jail (see docs/microvm.md).
    pub async fn load_snapshot(&self, state: &Path, memory: &Path) -> Result<(), ApiError> {
        self.call(
            Method::PUT,
            "/snapshot/load",
            &json!({
                "snapshot_path": state.display().to_string(),
                "mem_backend": {"backend_type": "File", "backend_path": memory.display().to_string()},
                "resume_vm": true,
            }),
        )
        .await
    }
}

/// The boot-time request sequence for `plan` (method, path, JSON body).
pub fn boot_requests(plan: &VmPlan, vsock_uds: &Path) -> Vec<(Method, String, Value)> {
    let mut boot_source = json!({
        "kernel_image_path": plan.kernel.display().to_string(),
        "boot_args": plan.cmdline,
    });
    if let Some(initrd) = &plan.initramfs {
        boot_source["initrd_path"] = json!(initrd.display().to_string());
    }
    let mut reqs = vec![(Method::PUT, "/boot-source".to_string(), boot_source)];
    for (id, path) in &plan.disks {
        reqs.push((
            Method::PUT,
            format!("/drives/{id}"),
            json!({
                "drive_id": id,
                "path_on_host": path.display().to_string(),
                // The root disk is found by label, so Firecracker must not add root=.
                "is_root_device": false,
                "is_read_only": true,
            }),
        ));
    }
    if let Some(scratch) = &plan.scratch {
        reqs.push((
            Method::PUT,
            "/drives/tmp".into(),
            json!({
                "drive_id": "tmp",
                "path_on_host": scratch.display().to_string(),
                "is_root_device": false,
                "is_read_only": false,
            }),
        ));
    }
    reqs.push((
        Method::PUT,
        "/machine-config".into(),
        json!({"vcpu_count": plan.vcpus, "mem_size_mib": plan.mem_mib, "smt": false}),
    ));
    reqs.push((
        Method::PUT,
        "/vsock".into(),
        json!({"guest_cid": GUEST_CID, "uds_path": vsock_uds.display().to_string()}),
    ));
    reqs.push((
        Method::PUT,
        "/actions".into(),
        json!({"action_type": "InstanceStart"}),
    ));
    reqs
}

/// Start a Firecracker process for `plan` and boot it through the API.
pub async fn launch(config: &FirecrackerConfig, plan: &VmPlan) -> Result<Launched, ExecutorError> {
    if plan.restore_from.is_some() {
        return Err(ExecutorError::Start(
            "snapshot restore is not wired up for Firecracker (docs/microvm.md)".into(),
        ));
    }
    let api_socket = plan.dir.join("firecracker.sock");
    let vsock_uds = plan.dir.join("vsock.sock");
    // Firecracker's serial console is its stdout: it lands in the console log.
    let mut vmm = super::qemu::spawn_logged(
        Command::new(&config.binary)
            .arg("--api-sock")
            .arg(&api_socket)
            .arg("--id")
            .arg(plan.dir.file_name().unwrap_or_default()),
        &plan.console_log,
        "firecracker (FAAS_FC_BINARY_PATH)",
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !api_socket.exists() {
        if let Ok(Some(status)) = vmm.try_wait() {
            return Err(ExecutorError::Start(format!(
                "firecracker exited ({status}): {}",
                super::tail(&plan.console_log, 5)
            )));
        }
        if Instant::now() > deadline {
            return Err(ExecutorError::Start(
                "firecracker did not create its API socket within 10s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    FirecrackerApi::new(&api_socket)
        .boot(plan, &vsock_uds)
        .await?;
    Ok(Launched {
        vmm,
        helper: None,
        agent: AgentEndpoint::HybridVsock(vsock_uds),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    type Log = Arc<Mutex<Vec<(String, String, Value)>>>;

    /// A fake Firecracker API: records each request and answers 204, or 400
    /// with a fault message for `fail_path`.
    async fn fake_api(listener: UnixListener, log: Log, fail_path: Option<&'static str>) {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap().to_string();
                let path = parts.next().unwrap().to_string();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).await.unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).await.unwrap();
                let body: Value = serde_json::from_slice(&body).unwrap();
                log.lock().unwrap().push((method, path.clone(), body));
                let reply = if Some(path.as_str()) == fail_path {
                    let msg = r#"{"fault_message":"Invalid kernel path"}"#;
                    format!("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{msg}", msg.len())
                } else {
                    "HTTP/1.1 204 No Content\r\n\r\n".to_string()
                };
                r.into_inner().write_all(reply.as_bytes()).await.unwrap();
            });
        }
    }

    fn plan() -> VmPlan {
        VmPlan {
            dir: PathBuf::from("/run/faas/vm/vm-1"),
            kernel: PathBuf::from("/img/vmlinux"),
            initramfs: Some(PathBuf::from("/img/initramfs.cpio")),
            cmdline: "console=ttyS0 reboot=k panic=-1".into(),
            disks: vec![
                ("rootfs".into(), PathBuf::from("/img/python.ext4")),
                ("code".into(), PathBuf::from("/cache/faas-code-ab.ext4")),
            ],
            scratch: None,
            mem_mib: 192,
            vcpus: 1,
            console_log: PathBuf::from("/run/faas/vm/vm-1/console.log"),
            restore_from: None,
        }
    }

    #[tokio::test]
    async fn boot_and_snapshot_requests_match_the_api_specification() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let log = Log::default();
        tokio::spawn(fake_api(
            UnixListener::bind(&sock).unwrap(),
            log.clone(),
            None,
        ));
        let api = FirecrackerApi::new(&sock);
        api.boot(&plan(), Path::new("/run/faas/vm/vm-1/vsock.sock"))
            .await
            .unwrap();
        api.pause().await.unwrap();
        api.create_snapshot(Path::new("/s/state"), Path::new("/s/mem"))
            .await
            .unwrap();
        api.load_snapshot(Path::new("/s/state"), Path::new("/s/mem"))
            .await
            .unwrap();
        let got = log.lock().unwrap().clone();
        let expected = vec![
            (
                "PUT",
                "/boot-source",
                json!({
                "kernel_image_path": "/img/vmlinux",
                "boot_args": "console=ttyS0 reboot=k panic=-1",
                "initrd_path": "/img/initramfs.cpio"}),
            ),
            (
                "PUT",
                "/drives/rootfs",
                json!({
                "drive_id": "rootfs", "path_on_host": "/img/python.ext4",
                "is_root_device": false, "is_read_only": true}),
            ),
            (
                "PUT",
                "/drives/code",
                json!({
                "drive_id": "code", "path_on_host": "/cache/faas-code-ab.ext4",
                "is_root_device": false, "is_read_only": true}),
            ),
            (
                "PUT",
                "/machine-config",
                json!({"vcpu_count": 1, "mem_size_mib": 192, "smt": false}),
            ),
            (
                "PUT",
                "/vsock",
                json!({"guest_cid": 3, "uds_path": "/run/faas/vm/vm-1/vsock.sock"}),
            ),
            ("PUT", "/actions", json!({"action_type": "InstanceStart"})),
            ("PATCH", "/vm", json!({"state": "Paused"})),
            (
                "PUT",
                "/snapshot/create",
                json!({
                "snapshot_type": "Full", "snapshot_path": "/s/state", "mem_file_path": "/s/mem"}),
            ),
            (
                "PUT",
                "/snapshot/load",
                json!({
                "snapshot_path": "/s/state",
                "mem_backend": {"backend_type": "File", "backend_path": "/s/mem"},
                "resume_vm": true}),
            ),
        ];
        assert_eq!(got.len(), expected.len(), "{got:#?}");
        for ((m, p, b), (em, ep, eb)) in got.iter().zip(expected) {
            assert_eq!((m.as_str(), p.as_str()), (em, ep));
            assert_eq!(b, &eb, "body of {em} {ep}");
        }
    }

    #[tokio::test]
    async fn a_refusal_carries_the_fault_message() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let log = Log::default();
        tokio::spawn(fake_api(
            UnixListener::bind(&sock).unwrap(),
            log.clone(),
            Some("/boot-source"),
        ));
        let err = FirecrackerApi::new(&sock)
            .boot(&plan(), Path::new("/v.sock"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ApiError::Refused { status: 400, fault, .. } if fault.contains("Invalid kernel path")),
            "{err}"
        );
        // Nothing after the refused call was sent.
        assert_eq!(log.lock().unwrap().len(), 1);
    }
}
