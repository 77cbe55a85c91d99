//! Socket handling: accept the host, decode frames, dispatch to the runtime.

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;

use faas_common::protocol::{FailureKind, Frame, Message, ProtocolError};

use crate::runtime::{self, Outcome, Runtime};

/// Errors that end the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Binding or accepting on the socket failed.
    #[error("socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// Where the agent listens for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// Listen on a Unix socket path.
    Unix(String),
    /// Connect to the host's Unix socket (native and Docker sandboxes) and
    /// serve that one connection.
    Connect(String),
    /// An AF_VSOCK port (microVMs; the host reaches it through the VMM's hybrid vsock).
    Vsock(u32),
    /// A virtio-serial port by name (QEMU microVMs that are saved and restored).
    Serial(String),
}

/// Bind `listen` and serve host connections until the runtime dies.
pub fn serve(listen: &Listen) -> Result<(), AgentError> {
    match listen {
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path)?;
            ready()?;
            let mut runtime: Option<Runtime> = None;
            for conn in listener.incoming() {
                let conn = conn?;
                if serve_conn(&mut runtime, conn.try_clone()?, conn) {
                    return Ok(());
                }
            }
            Ok(())
        }
        Listen::Connect(path) => {
            let conn = std::os::unix::net::UnixStream::connect(path)?;
            let mut runtime: Option<Runtime> = None;
            serve_conn(&mut runtime, conn.try_clone()?, conn);
            // The host went away, or the runtime died: this instance is over.
            Ok(())
        }
        Listen::Serial(name) => {
            let port = crate::vm::open_port(name)?;
            ready()?;
            let mut runtime: Option<Runtime> = None;
            loop {
                if serve_conn(&mut runtime, port.try_clone()?, port.try_clone()?) {
                    return Ok(());
                }
                // End of input: no host on the other end (at boot, or a restored
                // clone before its new host connects). Wait for one.
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        Listen::Vsock(port) => {
            let listener = crate::vm::vsock_listen(*port)?;
            ready()?;
            let mut runtime: Option<Runtime> = None;
            loop {
                let conn = crate::vm::accept(listener.as_raw_fd())?;
                if serve_conn(&mut runtime, conn.try_clone()?, conn) {
                    return Ok(());
                }
            }
        }
    }
}

/// The host waits for this line (on the container's output or the VM console)
/// rather than polling the socket.
fn ready() -> std::io::Result<()> {
    println!("FAAS_AGENT_READY");
    std::io::stdout().flush()
}

/// Serve one connection; true when the agent should exit.
fn serve_conn(runtime: &mut Option<Runtime>, reader: impl Read, writer: impl Write) -> bool {
    match handle(runtime, reader, writer) {
        Ok(Continue::Yes) => false,
        Ok(Continue::No) => true,
        // A broken connection is the host's business; wait for the next one.
        Err(e) => {
            eprintln!("faas-guest-agent: connection: {e}");
            false
        }
    }
}

enum Continue {
    Yes,
    No,
}

fn handle(
    runtime: &mut Option<Runtime>,
    reader: impl Read,
    writer: impl Write,
) -> Result<Continue, ProtocolError> {
    let mut reader = BufReader::new(reader);
    let mut writer = BufWriter::new(writer);
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
    let runs_code = matches!(
        frame.message,
        Message::Init(_) | Message::Prestart { .. } | Message::Invoke { .. } | Message::Exec { .. }
    );
    if !runs_code {
        return run(runtime, frame);
    }
    crate::vm::freeze_functions(false);
    let reply = run(runtime, frame);
    crate::vm::freeze_functions(true);
    reply
}

fn run(runtime: &mut Option<Runtime>, frame: Frame) -> (Frame, bool) {
    match frame.message {
        Message::Ping => (Frame::new(Message::Pong), false),
        Message::Init(spec) => (Frame::new(Runtime::start(runtime, spec)), false),
        Message::Prestart { language } => {
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
            let (rt, ready) = Runtime::prestart(language);
            *runtime = rt;
            (Frame::new(ready), false)
        }
        Message::Invoke {
            request_id,
            timeout_ms,
        } => match runtime.as_mut() {
            Some(rt) => {
                // The deadline on this side's clock, which the bootstrap shares.
                let deadline_ms = crate::runtime::unix_ms() + timeout_ms;
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
