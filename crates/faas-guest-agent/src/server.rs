//! Socket handling: accept the host, decode frames, dispatch to the runtime.

use std::io::{BufReader, BufWriter, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use faas_common::protocol::{FailureKind, Frame, Message, ProtocolError};

use crate::runtime::{self, Outcome, Runtime};

/// Errors that end the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Binding or accepting on the socket failed.
    #[error("socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// Bind `path` and serve host connections until the runtime dies.
pub fn serve(path: &str) -> Result<(), AgentError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    // The host waits for this line instead of polling the socket.
    println!("FAAS_AGENT_READY");
    std::io::stdout().flush()?;
    let mut runtime: Option<Runtime> = None;
    for conn in listener.incoming() {
        match handle(&mut runtime, conn?) {
            Ok(Continue::Yes) => {}
            Ok(Continue::No) => return Ok(()),
            // A broken connection is the host's business; wait for the next one.
            Err(e) => eprintln!("faas-guest-agent: connection: {e}"),
        }
    }
    Ok(())
}

enum Continue {
    Yes,
    No,
}

fn handle(runtime: &mut Option<Runtime>, conn: UnixStream) -> Result<Continue, ProtocolError> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = BufWriter::new(conn);
    loop {
        let frame = match Frame::read_from(&mut reader) {
            Ok(f) => f,
            Err(ProtocolError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(Continue::Yes)
            }
            Err(e) => return Err(e),
        };
        let (reply, fatal) = dispatch(runtime, frame);
        reply.write_to(&mut writer)?;
        if fatal {
            // The language runtime is gone; the host replaces this instance.
            return Ok(Continue::No);
        }
    }
}

fn dispatch(runtime: &mut Option<Runtime>, frame: Frame) -> (Frame, bool) {
    match frame.message {
        Message::Ping => (Frame::new(Message::Pong), false),
        Message::Init(spec) => {
            if runtime.is_some() {
                return (
                    Frame::new(Message::Ready {
                        error: Some("instance already initialised".into()),
                        logs: String::new(),
                        init_us: 0,
                    }),
                    false,
                );
            }
            let (rt, ready) = Runtime::start(spec);
            *runtime = rt;
            (Frame::new(ready), false)
        }
        Message::Invoke {
            request_id,
            deadline_ms,
        } => match runtime.as_mut() {
            Some(rt) => {
                let outcome = rt.invoke(&request_id, deadline_ms, frame.body);
                let fatal = outcome.failure == Some(FailureKind::RuntimeExited);
                (outcome.into_frame(request_id), fatal)
            }
            None => (
                Outcome::failed(FailureKind::Agent, "instance not initialised".into())
                    .into_frame(request_id),
                false,
            ),
        },
        Message::Exec {
            request_id,
            command,
            env,
        } => (
            runtime::exec(&command, &env, frame.body).into_frame(request_id),
            false,
        ),
        other => (
            Outcome::failed(
                FailureKind::Agent,
                format!("unexpected message from host: {other:?}"),
            )
            .into_frame(String::new()),
            false,
        ),
    }
}
