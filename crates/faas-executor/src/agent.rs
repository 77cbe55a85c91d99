//! The host side of the guest-agent protocol, over any byte stream (a Unix socket
//! for native and Docker sandboxes, a hybrid vsock socket for microVMs).

use std::time::Duration;

use faas_common::contract::{
    keep_tail, truncate, MAX_ERROR_BYTES, MAX_LOG_BYTES, MAX_RESPONSE_BYTES,
};
use faas_common::protocol::{FailureKind, Frame, Message, ProtocolError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{ExecutorError, InvokeOutput, Ready};

/// A connection to one guest agent.
pub struct AgentConn<S> {
    stream: S,
}

/// How the agent answered an invocation.
pub enum AgentReply {
    /// The round trip worked; the handler may still have failed (see `error`).
    Done(InvokeOutput),
    /// The language runtime died; the instance is gone.
    RuntimeExited {
        /// How it ended.
        reason: String,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
        /// What it printed before.
        logs: String,
    },
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> AgentConn<S> {
    /// Wrap a connected stream.
    pub fn new(stream: S) -> Self {
        AgentConn { stream }
    }

    /// The stream back (nothing is buffered between calls).
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Send one frame and read the reply.
    pub async fn call(&mut self, frame: Frame) -> Result<Frame, ProtocolError> {
        self.stream.write_all(&frame.encode()?).await?;
        self.stream.flush().await?;
        let len = self.stream.read_u32().await?;
        let len = Frame::check_len(len)?;
        let mut rest = vec![0u8; len];
        self.stream.read_exact(&mut rest).await?;
        Frame::decode(&rest)
    }

    /// Liveness probe.
    pub async fn ping(&mut self) -> Result<(), ExecutorError> {
        match self.call(Frame::new(Message::Ping)).await?.message {
            Message::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Send `Init` (load the handler) or `Prestart` (start a runtime with no
    /// function, which a later `Init` loads one into) and read the `Ready`.
    pub async fn load(&mut self, message: Message) -> Result<Ready, ExecutorError> {
        match self.call(Frame::new(message)).await?.message {
            Message::Ready {
                error: None,
                logs,
                init_us,
            } => Ok(Ready {
                logs: keep_tail(&logs, MAX_LOG_BYTES),
                init: Duration::from_micros(init_us),
            }),
            Message::Ready {
                error: Some(error),
                logs,
                ..
            } => Err(ExecutorError::Init {
                error: truncate(&error, MAX_ERROR_BYTES),
                logs: keep_tail(&logs, MAX_LOG_BYTES),
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Invoke the loaded handler.
    pub async fn invoke(
        &mut self,
        request_id: &str,
        timeout_ms: u64,
        payload: Vec<u8>,
    ) -> Result<AgentReply, ExecutorError> {
        let frame = Frame::with_body(
            Message::Invoke {
                request_id: request_id.to_string(),
                timeout_ms,
            },
            payload,
        );
        let reply = self.call(frame).await?;
        into_reply(reply)
    }

    /// Run a command once.
    pub async fn exec(
        &mut self,
        request_id: &str,
        command: Vec<String>,
        env: Vec<String>,
        stdin: Vec<u8>,
    ) -> Result<AgentReply, ExecutorError> {
        let frame = Frame::with_body(
            Message::Exec {
                request_id: request_id.to_string(),
                command,
                env,
            },
            stdin,
        );
        let reply = self.call(frame).await?;
        into_reply(reply)
    }
}

/// Read a `Result` frame. Everything in it comes from inside the sandbox, so
/// it is bounded here as well as in the agent: errors and logs are cut to
/// their limits, an oversized response fails the invocation, and a content
/// type that is not a plain media type is replaced.
fn into_reply(frame: Frame) -> Result<AgentReply, ExecutorError> {
    match frame.message {
        Message::Result {
            error,
            failure,
            logs,
            content_type,
            exit_code,
            signal,
            duration_us,
            ..
        } => {
            let error = error.map(|e| truncate(&e, MAX_ERROR_BYTES));
            let logs = keep_tail(&logs, MAX_LOG_BYTES);
            match failure {
                Some(FailureKind::RuntimeExited) => Ok(AgentReply::RuntimeExited {
                    reason: error.unwrap_or_else(|| "runtime exited".into()),
                    signal,
                    logs,
                }),
                Some(FailureKind::Agent) => Err(ExecutorError::Crashed {
                    reason: error.unwrap_or_else(|| "agent failure".into()),
                    signal: None,
                    logs,
                }),
                _ if frame.body.len() > MAX_RESPONSE_BYTES => Ok(AgentReply::Done(InvokeOutput {
                    body: Vec::new(),
                    content_type: "text/plain".into(),
                    logs,
                    error: Some(format!(
                        "response of {} bytes exceeds the {MAX_RESPONSE_BYTES} byte limit",
                        frame.body.len()
                    )),
                    exit_code,
                    duration: Duration::from_micros(duration_us),
                })),
                _ => Ok(AgentReply::Done(InvokeOutput {
                    body: frame.body,
                    content_type: media_type(content_type),
                    logs,
                    error,
                    exit_code,
                    duration: Duration::from_micros(duration_us),
                })),
            }
        }
        other => Err(unexpected(other)),
    }
}

/// `content_type` if it is a plausible media type (it becomes an HTTP header).
fn media_type(content_type: String) -> String {
    let ok = !content_type.is_empty()
        && content_type.len() <= 128
        && content_type
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ')
        && content_type.contains('/');
    if ok {
        content_type
    } else {
        "application/octet-stream".into()
    }
}

fn unexpected(message: Message) -> ExecutorError {
    ExecutorError::Crashed {
        signal: None,
        reason: truncate(
            &format!("unexpected reply from agent: {message:?}"),
            MAX_ERROR_BYTES,
        ),
        logs: String::new(),
    }
}
