//! What every agent-based instance shares, whatever holds the agent: the
//! conversation over the agent's socket, deadlines, and turning a lost agent into
//! the right error (timeout, out of memory, crash). A [`Backend`] supplies the
//! sandbox-specific parts: how to tell an OOM kill, what the sandbox says when the
//! agent is lost, and how to tear it down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use faas_common::protocol::{InitSpec, Message};
use tokio::net::UnixStream;

use crate::agent::{AgentConn, AgentReply};
use crate::{ExecutorError, Instance, InvokeOutput};

/// The sandbox-specific side of an instance.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// Instance id (container name, cgroup name).
    fn id(&self) -> &str;
    /// Whether the OOM killer struck in this sandbox since the last call.
    async fn oom_struck(&mut self) -> bool;
    /// Whether memory use reached the limit since the last call. Asked only when
    /// a process died of SIGKILL, which then makes the limit the likely killer.
    async fn limit_hit(&mut self) -> bool {
        false
    }
    /// What the sandbox itself reports after the agent was lost (exit status, stderr).
    async fn diagnose(&mut self) -> String;
    /// The switch that stops every process of the sandbox where it stands
    /// (an idle instance: whatever a handler left running must not use CPU
    /// between invocations). Sandboxes that freeze themselves (a microVM's
    /// agent does) keep the default.
    fn freezer(&self) -> Option<Arc<dyn FreezeSwitch>> {
        None
    }
    /// Remove everything the sandbox has on the host.
    async fn destroy(&mut self);
}

/// Freezes and thaws one sandbox; shared with the task that freezes it once
/// it has been idle a while.
pub(crate) trait FreezeSwitch: Send + Sync + 'static {
    /// Stop every process where it stands.
    fn freeze(&self) -> std::io::Result<()>;
    /// Let them run again.
    fn thaw(&self) -> std::io::Result<()>;
}

/// How long an idle instance runs on before it is frozen. Freezing is not
/// free (the kernel's freezer patches code and interrupts every CPU when a
/// cgroup enters or leaves it), so an instance that is called again within
/// this never freezes; a process a handler left running gets at most this
/// much CPU after each call.
const FREEZE_AFTER: Duration = Duration::from_millis(50);

/// Where an instance stands with its freezer.
#[derive(Default)]
struct Parking {
    /// Counts parks and unparks: a freeze scheduled at one park is void once
    /// this moved on.
    generation: u64,
    frozen: bool,
}

/// An instance: a backend plus a connected agent.
pub(crate) struct AgentInstance<B: Backend> {
    backend: B,
    conn: AgentConn<UnixStream>,
    memory_mb: u32,
    freezer: Option<Arc<dyn FreezeSwitch>>,
    parking: Arc<Mutex<Parking>>,
    /// Specialised from a pre-started instance.
    prestarted: bool,
}

impl<B: Backend> AgentInstance<B> {
    /// Wrap a started sandbox whose agent accepted `stream`; load the handler if
    /// `init` is given. On failure the sandbox is destroyed before returning.
    pub(crate) async fn start(
        backend: B,
        stream: UnixStream,
        memory_mb: u32,
        init: Option<InitSpec>,
        load_timeout: Duration,
    ) -> Result<Self, ExecutorError> {
        let mut instance = AgentInstance {
            freezer: backend.freezer(),
            backend,
            conn: AgentConn::new(stream),
            memory_mb,
            parking: Arc::default(),
            prestarted: false,
        };
        let Some(init) = init else {
            return Ok(instance);
        };
        match instance.load(init, load_timeout).await {
            Ok(()) => Ok(instance),
            Err(e) => {
                instance.destroy_backend().await;
                Err(e)
            }
        }
    }

    /// Load the handler `init` within `load_timeout` and park the instance.
    /// On `Err` the instance must not be used (its owner destroys it).
    async fn load(&mut self, init: InitSpec, load_timeout: Duration) -> Result<(), ExecutorError> {
        self.unpark()?;
        self.ready(Message::Init(init), load_timeout, "handler did not load")
            .await
    }

    /// Start `language`'s runtime with no function (a pre-started instance)
    /// and park it. On `Err` the instance must not be used.
    pub(crate) async fn prestart(
        &mut self,
        language: faas_common::Language,
        timeout: Duration,
    ) -> Result<(), ExecutorError> {
        self.ready(
            Message::Prestart { language },
            timeout,
            "runtime did not start",
        )
        .await
    }

    /// Send `message` (`Init`, `Prestart`), wait `timeout` for `Ready`, park.
    async fn ready(
        &mut self,
        message: Message,
        timeout: Duration,
        late: &str,
    ) -> Result<(), ExecutorError> {
        let err = match tokio::time::timeout(timeout, self.conn.load(message)).await {
            Ok(Ok(_ready)) => {
                self.park();
                return Ok(());
            }
            Ok(Err(e)) => self.classify(e).await,
            Err(_) => ExecutorError::Start(format!("{late} within {timeout:?}")),
        };
        Err(err)
    }

    /// Load `init` into this pre-started instance, whose limit is now
    /// `memory_mb`. On `Err` the instance is destroyed.
    pub(crate) async fn specialise(
        &mut self,
        init: InitSpec,
        memory_mb: u32,
        load_timeout: Duration,
    ) -> Result<(), ExecutorError> {
        self.memory_mb = memory_mb;
        self.prestarted = true;
        let loaded = self.load(init, load_timeout).await;
        if loaded.is_err() {
            self.destroy_backend().await;
        }
        loaded
    }

    /// The sandbox side, for sandbox-specific steps after start (a snapshot).
    pub(crate) fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Tear the sandbox down (when a start-time step after loading failed).
    pub(crate) async fn destroy_backend(&mut self) {
        self.retire();
        self.backend.destroy().await;
    }

    /// The instance is idle: freeze it if it stays idle for [`FREEZE_AFTER`].
    /// A freezer that fails leaves it running, which costs CPU but breaks
    /// nothing: say so and carry on.
    fn park(&mut self) {
        let Some(freezer) = self.freezer.clone() else {
            return;
        };
        let generation = {
            let mut p = self.parking.lock().expect("parking lock");
            p.generation += 1;
            p.generation
        };
        let (parking, id) = (self.parking.clone(), self.backend.id().to_string());
        tokio::spawn(async move {
            tokio::time::sleep(FREEZE_AFTER).await;
            // The freezer's file write can take a while: off the async threads.
            let _ = tokio::task::spawn_blocking(move || {
                let mut p = parking.lock().expect("parking lock");
                if p.generation != generation || p.frozen {
                    return;
                }
                match freezer.freeze() {
                    Ok(()) => p.frozen = true,
                    Err(e) => tracing::warn!(instance = id, "cannot freeze: {e}"),
                }
            })
            .await;
        });
    }

    /// Before talking to its agent: cancel a pending freeze, thaw a frozen one.
    fn unpark(&mut self) -> Result<(), ExecutorError> {
        let Some(freezer) = &self.freezer else {
            return Ok(());
        };
        let mut p = self.parking.lock().expect("parking lock");
        p.generation += 1;
        if p.frozen {
            freezer.thaw().map_err(ExecutorError::io("thaw instance"))?;
            p.frozen = false;
        }
        Ok(())
    }

    /// No freeze may come after the sandbox is gone.
    fn retire(&self) {
        self.parking.lock().expect("parking lock").generation += 1;
    }

    /// Turn a failure into OutOfMemory when the OOM killer struck, and a lost
    /// agent into a crash report with what the sandbox says.
    async fn classify(&mut self, err: ExecutorError) -> ExecutorError {
        let logs = err.logs().unwrap_or_default().to_string();
        let killed = match &err {
            ExecutorError::Crashed { signal, .. } => *signal == Some(libc::SIGKILL),
            ExecutorError::Protocol(_) => true,
            _ => false,
        };
        if self.oom_struck(killed).await {
            return ExecutorError::OutOfMemory {
                limit_mb: self.memory_mb,
                logs,
            };
        }
        match err {
            ExecutorError::Protocol(e) => ExecutorError::Crashed {
                signal: None,
                reason: format!("lost the agent ({e}); {}", self.backend.diagnose().await),
                logs,
            },
            other => other,
        }
    }

    /// Whether the OOM killer struck. The kernel counts an OOM kill just after it
    /// sends SIGKILL, and the victim's death can reach us first: when something was
    /// killed, look again for a moment before calling it anything else.
    async fn oom_struck(&mut self, killed: bool) -> bool {
        if self.backend.oom_struck().await {
            return true;
        }
        if !killed {
            return false;
        }
        if self.backend.limit_hit().await {
            return true;
        }
        // Up to 5 s: the kernel counts the kill only after printing its OOM
        // report, which a slow console on a loaded host can make take seconds.
        // Only a SIGKILL that was not an OOM kill (rare) pays the full wait.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.backend.oom_struck().await || self.backend.limit_hit().await {
                return true;
            }
        }
        false
    }

    /// Interpret the outcome of a timed agent call.
    async fn settle(
        &mut self,
        timeout: Duration,
        reply: Result<Result<AgentReply, ExecutorError>, tokio::time::error::Elapsed>,
    ) -> Result<InvokeOutput, ExecutorError> {
        let Ok(reply) = reply else {
            return Err(ExecutorError::Timeout { after: timeout });
        };
        match reply {
            Ok(AgentReply::Done(out)) => {
                // A child the handler started may have been OOM-killed while the
                // handler survived; say so rather than report a bare failure.
                let failed = out.error.is_some() || out.exit_code.is_some_and(|c| c != 0);
                // 137 = 128 + SIGKILL: how a shell reports a child the OOM killer took.
                let killed = out.exit_code.is_none_or(|c| c == 137);
                if failed && self.oom_struck(killed).await {
                    return Err(ExecutorError::OutOfMemory {
                        limit_mb: self.memory_mb,
                        logs: out.logs,
                    });
                }
                Ok(out)
            }
            Ok(AgentReply::RuntimeExited {
                reason,
                signal,
                logs,
            }) => Err(self
                .classify(ExecutorError::Crashed {
                    reason,
                    signal,
                    logs,
                })
                .await),
            Err(e) => Err(self.classify(e).await),
        }
    }
}

#[async_trait]
impl<B: Backend> Instance for AgentInstance<B> {
    fn id(&self) -> &str {
        self.backend.id()
    }

    fn prestarted(&self) -> bool {
        self.prestarted
    }

    async fn invoke(
        &mut self,
        request_id: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<InvokeOutput, ExecutorError> {
        self.unpark()?;
        let call = self
            .conn
            .invoke(request_id, timeout.as_millis() as u64, payload);
        let reply = tokio::time::timeout(timeout, call).await;
        let out = self.settle(timeout, reply).await;
        if out.is_ok() {
            self.park();
        }
        out
    }

    async fn exec(
        &mut self,
        request_id: &str,
        command: Vec<String>,
        env: Vec<String>,
        stdin: Vec<u8>,
        timeout: Duration,
    ) -> Result<InvokeOutput, ExecutorError> {
        self.unpark()?;
        let call = self.conn.exec(request_id, command, env, stdin);
        let reply = tokio::time::timeout(timeout, call).await;
        self.settle(timeout, reply).await
    }

    async fn ping(&mut self, timeout: Duration) -> Result<(), ExecutorError> {
        self.unpark()?;
        match tokio::time::timeout(timeout, self.conn.ping()).await {
            Ok(Ok(())) => {
                self.park();
                Ok(())
            }
            Ok(Err(e)) => Err(self.classify(e).await),
            Err(_) => Err(ExecutorError::Crashed {
                signal: None,
                reason: format!(
                    "agent did not answer a heartbeat within {timeout:?}; {}",
                    self.backend.diagnose().await
                ),
                logs: String::new(),
            }),
        }
    }

    async fn destroy(mut self: Box<Self>) {
        self.retire();
        self.backend.destroy().await;
    }
}
