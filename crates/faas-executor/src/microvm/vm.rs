//! One VM on the host: its directory, its processes (owned by a supervisor
//! task), the agent endpoint, the console it reads OOM reports from, and the
//! control channel that reseeds a restored clone.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use faas_common::contract::{Reseed, CONTROL_VSOCK_PORT, RESEED_OK};
use faas_common::protocol::AGENT_VSOCK_PORT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::{oneshot, watch};

use super::{qmp, vsock, AgentEndpoint, Launched, SerialSockets};
use crate::instance::Backend;
use crate::ExecutorError;

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

/// Why saving a VM failed.
pub(super) enum SaveError {
    /// The state was not written; the VM runs on.
    Saving(ExecutorError),
    /// The VM could not be resumed afterwards and is unusable.
    Resuming(ExecutorError),
}

/// One VM: its directory and, through the supervisor task, its processes.
pub struct VmBackend {
    pub(super) id: String,
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
    pub(super) fn new(id: String, dir: PathBuf) -> Self {
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
    pub(super) fn supervise(&mut self, launched: Launched) {
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

    pub(super) fn vmm_exit(&self) -> Option<String> {
        self.exited.as_ref().and_then(|rx| rx.borrow().clone())
    }

    /// Connect to the agent once it is up, within `timeout`.
    pub(super) async fn wait_for_agent(
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

    pub(super) fn serial_sockets(&self) -> Result<&SerialSockets, ExecutorError> {
        match &self.endpoint {
            Some(AgentEndpoint::Serial(s)) => Ok(s),
            _ => Err(ExecutorError::Start(
                "snapshots need the virtio-serial channel".into(),
            )),
        }
    }

    /// Load a saved state into this (just launched, `-incoming defer`) QEMU and resume it.
    pub(super) async fn load(
        &mut self,
        state: &Path,
        timeout: Duration,
    ) -> Result<(), ExecutorError> {
        let qmp_socket = self.serial_sockets()?.qmp.clone();
        let fail = |e: qmp::QmpError| ExecutorError::Start(format!("restore: {e}"));
        let mut qmp = qmp::Qmp::connect(&qmp_socket, Duration::from_secs(10))
            .await
            .map_err(fail)?;
        qmp.load(state, timeout).await.map_err(fail)?;
        qmp.resume().await.map_err(fail)
    }

    /// Give a restored guest fresh randomness and the current time.
    pub(super) async fn reseed(&mut self) -> Result<(), ExecutorError> {
        let control = self.serial_sockets()?.control.clone();
        let stream = tokio::net::UnixStream::connect(&control)
            .await
            .map_err(ExecutorError::io("connect to the control port"))?;
        reseed_over(stream).await
    }

    /// Pause the VM, write its state to `state` (atomically: a temporary file
    /// renamed into place) and resume it. With `scratch` = (its writable
    /// disk, where to keep it), the disk is copied while the VM is paused,
    /// so state and disk agree (QEMU has flushed the disk when the save
    /// completes), before the state is renamed into place.
    pub(super) async fn save(
        &mut self,
        state: &Path,
        scratch: Option<(&Path, PathBuf)>,
    ) -> Result<(), SaveError> {
        let qmp_socket = self
            .serial_sockets()
            .map_err(SaveError::Saving)?
            .qmp
            .clone();
        let mut qmp = qmp::Qmp::connect(&qmp_socket, Duration::from_secs(10))
            .await
            .map_err(|e| SaveError::Saving(ExecutorError::Start(format!("snapshot: {e}"))))?;
        let tmp = state.with_extension(format!("{}.tmp", self.id));
        let saved = match qmp.save(&tmp, Duration::from_secs(120)).await {
            Ok(()) => match &scratch {
                Some((disk, keep)) => {
                    // One left by a state since pruned would refuse the copy.
                    let _ = tokio::fs::remove_file(keep).await;
                    super::copy_sparse(disk, keep).await.map_err(|e| {
                        qmp::QmpError::Migration(format!("keeping the /tmp disk: {e}"))
                    })
                }
                None => Ok(()),
            },
            Err(e) => Err(e),
        };
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
                if let Some((_, keep)) = &scratch {
                    let _ = tokio::fs::remove_file(keep).await;
                }
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
