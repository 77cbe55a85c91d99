//! The host side of the guest-agent protocol, over any byte stream (a Unix socket
//! for native and Docker sandboxes, a hybrid vsock socket for microVMs).

use std::time::Duration;

use faas_common::protocol::{FailureKind, Frame, InitSpec, Message, ProtocolError};
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

    /// Load the handler.
    pub async fn init(&mut self, spec: InitSpec) -> Result<Ready, ExecutorError> {
        match self.call(Frame::new(Message::Init(spec))).await?.message {
            Message::Ready {
                error: None,
                logs,
                init_us,
            } => Ok(Ready {
                logs,
                init: Duration::from_micros(init_us),
            }),
            Message::Ready {
                error: Some(error),
                logs,
                ..
            } => Err(ExecutorError::Init { error, logs }),
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

fn into_reply(frame: Frame) -> Result<AgentReply, ExecutorError> {
    match frame.message {
        Message::Result {
            error,
            failure,
            logs,
            content_type,
            exit_code,
            duration_us,
            ..
        } => match failure {
            Some(FailureKind::RuntimeExited) => Ok(AgentReply::RuntimeExited {
                reason: error.unwrap_or_else(|| "runtime exited".into()),
                logs,
            }),
            Some(FailureKind::Agent) => Err(ExecutorError::Crashed {
                reason: error.unwrap_or_else(|| "agent failure".into()),
                logs,
            }),
            _ => Ok(AgentReply::Done(InvokeOutput {
                body: frame.body,
                content_type,
                logs,
                error,
                exit_code,
                duration: Duration::from_micros(duration_us),
            })),
        },
        other => Err(unexpected(other)),
    }
}

fn unexpected(message: Message) -> ExecutorError {
    ExecutorError::Crashed {
        reason: format!("unexpected reply from agent: {message:?}"),
        logs: String::new(),
    }
}
