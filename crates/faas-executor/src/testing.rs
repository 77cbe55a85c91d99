//! A sandbox without isolation, for tests that need no root: each instance is
//! a fake agent on the far end of a `UnixStream::pair()`, speaking the real
//! frames through the real host side ([`crate::agent`] and the shared
//! instance logic: deadlines, classification, freezing). Only the sandbox
//! around the agent is pretend.
//!
//! The fake agent answers `Init` with `Ready`, `Ping` with `Pong` (unless told
//! to hang), and an `Invoke` by its payload:
//!
//! | payload | reply |
//! |---|---|
//! | `crash` | closes the connection (the runtime died) |
//! | `oom` | the runtime was killed by signal 9, and the OOM killer counts it |
//! | `kill` | the runtime was killed by signal 9, without the OOM killer |
//! | `hang` | nothing, ever |
//! | `fail` | a handler error |
//! | anything else | the payload, echoed |

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use faas_common::protocol::{FailureKind, Frame, Message};
use faas_common::SandboxKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::instance::{AgentInstance, Backend, FreezeSwitch};
use crate::{ExecutorError, Instance, InstanceSpec, Sandbox};

/// What the fake sandbox has done, for tests to look at.
#[derive(Debug, Default)]
pub struct FakeCounters {
    /// Instances started.
    pub started: AtomicUsize,
    /// Instances destroyed.
    pub destroyed: AtomicUsize,
    /// Instances frozen now.
    pub frozen: AtomicUsize,
}

/// A sandbox whose instances are fake agents in this process.
#[derive(Default)]
pub struct FakeSandbox {
    /// Counters shared with every instance.
    pub counters: Arc<FakeCounters>,
    /// When set, agents stop answering pings (a hung guest).
    pub hang_pings: Arc<AtomicBool>,
    /// How long a start takes.
    pub start_delay: Duration,
}

struct FakeBackend {
    id: String,
    counters: Arc<FakeCounters>,
    oom: Arc<AtomicBool>,
    oom_seen: bool,
    freezer: Arc<FakeFreezer>,
    destroyed: bool,
}

/// Counts frozen instances instead of freezing anything.
struct FakeFreezer {
    counters: Arc<FakeCounters>,
    frozen: AtomicBool,
}

impl FreezeSwitch for FakeFreezer {
    fn freeze(&self) -> std::io::Result<()> {
        if !self.frozen.swap(true, Ordering::SeqCst) {
            self.counters.frozen.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn thaw(&self) -> std::io::Result<()> {
        if self.frozen.swap(false, Ordering::SeqCst) {
            self.counters.frozen.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn id(&self) -> &str {
        &self.id
    }

    async fn oom_struck(&mut self) -> bool {
        let struck = self.oom.load(Ordering::SeqCst) && !self.oom_seen;
        self.oom_seen |= struck;
        struck
    }

    async fn diagnose(&mut self) -> String {
        "fake sandbox".into()
    }

    fn freezer(&self) -> Option<Arc<dyn FreezeSwitch>> {
        Some(self.freezer.clone())
    }

    async fn destroy(&mut self) {
        if !self.destroyed {
            self.destroyed = true;
            let _ = self.freezer.thaw();
            self.counters.destroyed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Sandbox for FakeSandbox {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Native
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Box<dyn Instance>, ExecutorError> {
        tokio::time::sleep(self.start_delay).await;
        let n = self.counters.started.fetch_add(1, Ordering::SeqCst);
        let (host, guest) = UnixStream::pair().map_err(ExecutorError::io("socket pair"))?;
        let oom = Arc::new(AtomicBool::new(false));
        tokio::spawn(fake_agent(guest, oom.clone(), self.hang_pings.clone()));
        let backend = FakeBackend {
            id: format!("fake-{n}"),
            counters: self.counters.clone(),
            oom,
            oom_seen: false,
            freezer: Arc::new(FakeFreezer {
                counters: self.counters.clone(),
                frozen: AtomicBool::new(false),
            }),
            destroyed: false,
        };
        let instance = AgentInstance::start(
            backend,
            host,
            spec.memory_mb,
            spec.init,
            Duration::from_secs(5),
        )
        .await?;
        Ok(Box::new(instance))
    }

    async fn reap_leftovers(&self) -> Result<usize, ExecutorError> {
        Ok(0)
    }
}

async fn fake_agent(mut stream: UnixStream, oom: Arc<AtomicBool>, hang_pings: Arc<AtomicBool>) {
    loop {
        let Ok(len) = stream.read_u32().await else {
            return;
        };
        let Ok(len) = Frame::check_len(len) else {
            return;
        };
        let mut rest = vec![0u8; len];
        if stream.read_exact(&mut rest).await.is_err() {
            return;
        }
        let Ok(frame) = Frame::decode(&rest) else {
            return;
        };
        let reply = match frame.message {
            Message::Init(_) => Frame::new(Message::Ready {
                error: None,
                logs: String::new(),
                init_us: 1,
            }),
            Message::Ping if hang_pings.load(Ordering::SeqCst) => continue,
            Message::Ping => Frame::new(Message::Pong),
            Message::Invoke { request_id, .. } => match frame.body.as_slice() {
                b"crash" => return,
                b"hang" => {
                    std::future::pending::<()>().await;
                    return;
                }
                b"oom" | b"kill" => {
                    oom.store(frame.body == b"oom", Ordering::SeqCst);
                    result(
                        request_id,
                        Some(FailureKind::RuntimeExited),
                        Some(9),
                        vec![],
                    )
                }
                b"fail" => result(request_id, Some(FailureKind::Handler), None, vec![]),
                _ => result(request_id, None, None, frame.body),
            },
            _ => return,
        };
        let Ok(bytes) = reply.encode() else {
            return;
        };
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

fn result(
    request_id: String,
    failure: Option<FailureKind>,
    signal: Option<i32>,
    body: Vec<u8>,
) -> Frame {
    Frame::with_body(
        Message::Result {
            request_id,
            error: failure.map(|f| format!("fake failure: {f:?}")),
            failure,
            logs: "fake logs".into(),
            content_type: "application/octet-stream".into(),
            exit_code: None,
            signal,
            duration_us: 1,
        },
        body,
    )
}

/// A spec the fake agents start: a 64 MiB Python instance of handler `m.h`.
pub fn instance_spec() -> InstanceSpec {
    InstanceSpec {
        language: faas_common::Language::Python,
        code_dir: None,
        deps_dir: None,
        memory_mb: 64,
        ephemeral_mb: 64,
        init: Some(faas_common::protocol::InitSpec {
            language: faas_common::Language::Python,
            handler: "m.h".into(),
            code_dir: "/var/task".into(),
            deps_dir: None,
            function_name: "f".into(),
            function_version: 1,
            memory_mb: 64,
            env: Default::default(),
        }),
        egress: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_are_told_apart() {
        let sandbox = FakeSandbox::default();
        let t = Duration::from_millis(300);
        let mut i = sandbox.start(instance_spec()).await.unwrap();
        assert_eq!(i.invoke("r", b"hi".to_vec(), t).await.unwrap().body, b"hi");
        let frozen = || sandbox.counters.frozen.load(Ordering::SeqCst);
        assert_eq!(frozen(), 0, "called again soon, it is never frozen");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(frozen(), 1, "idle a while after the call: frozen");
        assert_eq!(i.invoke("r", b"hi".to_vec(), t).await.unwrap().body, b"hi");
        assert_eq!(frozen(), 0, "thawed for the call");
        let out = i.invoke("r", b"fail".to_vec(), t).await.unwrap();
        assert!(out.error.is_some(), "a handler error is a result");
        assert!(matches!(
            i.invoke("r", b"oom".to_vec(), t).await,
            Err(ExecutorError::OutOfMemory { limit_mb: 64, .. })
        ));
        i.destroy().await;

        let mut i = sandbox.start(instance_spec()).await.unwrap();
        assert!(matches!(
            i.invoke("r", b"hang".to_vec(), t).await,
            Err(ExecutorError::Timeout { .. })
        ));
        i.destroy().await;

        let mut i = sandbox.start(instance_spec()).await.unwrap();
        match i.invoke("r", b"crash".to_vec(), t).await {
            Err(ExecutorError::Crashed { reason, .. }) => {
                assert!(reason.contains("lost the agent"), "{reason}")
            }
            other => panic!("expected a crash, got {:?}", other.map(|o| o.body)),
        }
        i.destroy().await;
        assert_eq!(sandbox.counters.destroyed.load(Ordering::SeqCst), 3);
        assert_eq!(sandbox.counters.frozen.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kill_that_is_not_the_oom_killer_is_a_crash() {
        let sandbox = FakeSandbox::default();
        let mut i = sandbox.start(instance_spec()).await.unwrap();
        match i
            .invoke("r", b"kill".to_vec(), Duration::from_secs(1))
            .await
        {
            Err(ExecutorError::Crashed { signal, .. }) => assert_eq!(signal, Some(9)),
            other => panic!("expected a crash, got {:?}", other.map(|o| o.body)),
        }
    }
}
