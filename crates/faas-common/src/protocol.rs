//! The host <-> guest agent protocol.
//!
//! One frame on the wire:
//!
//! ```text
//! +-----------+---------+-------------+------------------+-------------+
//! | len: u32  | ver: u8 | hlen: u32   | header: JSON     | body: bytes |
//! +-----------+---------+-------------+------------------+-------------+
//!   big endian; `len` counts everything after itself.
//! ```
//!
//! The header is a [`Message`]; the body carries raw payloads (invocation input,
//! response, stdin/stdout of `/execute`) so they never pay for base64 or JSON escaping.
//! A frame whose version is not [`PROTOCOL_VERSION`] is refused, so a host and an
//! agent from different releases fail loudly instead of misreading each other.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::Language;

/// Version byte carried by every frame.
pub const PROTOCOL_VERSION: u8 = 2;

/// Name of the virtio-serial port the agent serves frames on in a QEMU guest
/// restored from snapshots (instead of vsock [`AGENT_VSOCK_PORT`]).
pub const AGENT_PORT_NAME: &str = "faas.agent";
/// Name of the virtio-serial port for control requests (reseed) in such a guest.
pub const CONTROL_PORT_NAME: &str = "faas.control";
/// Kernel command line argument telling the agent (as init) to use the
/// virtio-serial ports rather than vsock.
pub const SERIAL_TRANSPORT_ARG: &str = "faas.transport=serial";

/// Largest frame either side accepts (header + body).
pub const MAX_FRAME_LEN: u32 = 64 * 1024 * 1024;

/// vsock port the agent listens on inside a microVM.
pub const AGENT_VSOCK_PORT: u32 = 1234;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The underlying stream failed or closed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {0} (this side speaks {PROTOCOL_VERSION})")]
    Version(u8),
    /// The frame is larger than [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN} byte limit")]
    TooLarge(u64),
    /// The frame is shorter than its own header says.
    #[error("truncated frame")]
    Truncated,
    /// The header is not a valid [`Message`].
    #[error("bad frame header: {0}")]
    Header(#[from] serde_json::Error),
}

/// Everything needed to load a function in a fresh instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitSpec {
    /// Runtime language.
    pub language: Language,
    /// `module.function` (Python, Node.js) or script path (shell).
    pub handler: String,
    /// Directory holding the function's code inside the sandbox.
    pub code_dir: String,
    /// Directory holding installed dependencies inside the sandbox, if any.
    pub deps_dir: Option<String>,
    /// Function name, reported to the handler's context.
    pub function_name: String,
    /// Function version, reported to the handler's context.
    pub function_version: u32,
    /// Memory limit, reported to the handler's context.
    pub memory_mb: u32,
    /// Environment variables for the function.
    pub env: BTreeMap<String, String>,
}

/// Why an invocation failed, as the agent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The handler raised, rejected, or (shell) exited non-zero.
    Handler,
    /// The handler could not be loaded.
    Init,
    /// The language runtime process died (signal, `exit()`, out of memory).
    RuntimeExited,
    /// The agent itself could not do what was asked.
    Agent,
}

/// Frame headers. The `type` field names the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Host -> agent, first frame on a function instance: load the handler.
    Init(InitSpec),
    /// Host -> agent, first frame on a pre-started instance: start the
    /// language's runtime (interpreter and bootstrap) with no function in it.
    /// The `Init` that follows loads the handler into that runtime. Answered
    /// with `Ready`.
    Prestart {
        /// The runtime to start.
        language: Language,
    },
    /// Agent -> host: the handler is loaded (or failed to load, see `error`).
    Ready {
        /// Load error, if any; the instance is unusable then.
        error: Option<String>,
        /// What loading printed.
        logs: String,
        /// Time spent loading, in microseconds.
        init_us: u64,
    },
    /// Host -> agent: run the handler; body is the payload.
    Invoke {
        /// Request id, passed to the handler's context.
        request_id: String,
        /// Milliseconds the handler may run, counted from the frame's arrival.
        /// A duration rather than a point in time: a microVM's clock need not
        /// agree with the host's to the millisecond.
        timeout_ms: u64,
    },
    /// Agent -> host: outcome of `Invoke` or `Exec`; body is the response (stdout for `Exec`).
    Result {
        /// Request id of the invocation this answers.
        request_id: String,
        /// Error message; `None` on success.
        error: Option<String>,
        /// Kind of failure when `error` is set.
        failure: Option<FailureKind>,
        /// What the function printed (stderr for `Exec`).
        logs: String,
        /// MIME type of the body.
        content_type: String,
        /// Exit status (`Exec` and shell functions).
        exit_code: Option<i32>,
        /// The signal that ended the runtime, when `failure` is `RuntimeExited`
        /// and a signal did (9: the OOM killer's, or a kill).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// Time the handler ran, in microseconds.
        duration_us: u64,
    },
    /// Host -> agent: run a command once; body is its stdin.
    Exec {
        /// Request id echoed in the result.
        request_id: String,
        /// Argument vector.
        command: Vec<String>,
        /// `KEY=VALUE` pairs.
        env: Vec<String>,
    },
    /// Host -> agent liveness probe.
    Ping,
    /// Agent -> host answer to [`Message::Ping`].
    Pong,
}

/// A header and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message.
    pub message: Message,
    /// Raw bytes that go with it.
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame with an empty body.
    pub fn new(message: Message) -> Self {
        Frame {
            message,
            body: Vec::new(),
        }
    }

    /// A frame with a body.
    pub fn with_body(message: Message, body: Vec<u8>) -> Self {
        Frame { message, body }
    }

    /// Serialize to wire bytes, length prefix included.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        let header = serde_json::to_vec(&self.message)?;
        let len = 1 + 4 + header.len() as u64 + self.body.len() as u64;
        if len > MAX_FRAME_LEN as u64 {
            return Err(ProtocolError::TooLarge(len));
        }
        let mut out = Vec::with_capacity(4 + len as usize);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(PROTOCOL_VERSION);
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.body);
        Ok(out)
    }

    /// Check a length prefix before reading the rest of a frame.
    pub fn check_len(len: u32) -> Result<usize, ProtocolError> {
        if len > MAX_FRAME_LEN {
            return Err(ProtocolError::TooLarge(len as u64));
        }
        if len < 5 {
            return Err(ProtocolError::Truncated);
        }
        Ok(len as usize)
    }

    /// Parse the bytes that follow the length prefix.
    pub fn decode(rest: &[u8]) -> Result<Frame, ProtocolError> {
        if rest.len() < 5 {
            return Err(ProtocolError::Truncated);
        }
        if rest[0] != PROTOCOL_VERSION {
            return Err(ProtocolError::Version(rest[0]));
        }
        let hlen = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let header = rest.get(5..5 + hlen).ok_or(ProtocolError::Truncated)?;
        let message = serde_json::from_slice(header)?;
        Ok(Frame {
            message,
            body: rest[5 + hlen..].to_vec(),
        })
    }

    /// Blocking read of one frame (used by the guest agent).
    pub fn read_from<R: Read>(r: &mut R) -> Result<Frame, ProtocolError> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let len = Frame::check_len(u32::from_be_bytes(len))?;
        let mut rest = vec![0u8; len];
        r.read_exact(&mut rest)?;
        Frame::decode(&rest)
    }

    /// Blocking write of one frame (used by the guest agent).
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<(), ProtocolError> {
        w.write_all(&self.encode()?)?;
        w.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoke() -> Frame {
        Frame::with_body(
            Message::Invoke {
                request_id: "r1".into(),
                timeout_ms: 42,
            },
            b"{\"x\":1}".to_vec(),
        )
    }

    #[test]
    fn round_trip() {
        let f = invoke();
        let bytes = f.encode().unwrap();
        let back = Frame::read_from(&mut bytes.as_slice()).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn refuses_other_versions() {
        let mut bytes = invoke().encode().unwrap();
        bytes[4] = 9;
        assert!(matches!(
            Frame::read_from(&mut bytes.as_slice()),
            Err(ProtocolError::Version(9))
        ));
    }

    #[test]
    fn refuses_oversized_and_truncated() {
        let big = (MAX_FRAME_LEN + 1).to_be_bytes();
        assert!(matches!(
            Frame::read_from(&mut big.as_slice()),
            Err(ProtocolError::TooLarge(_))
        ));
        let mut bytes = invoke().encode().unwrap();
        bytes.truncate(bytes.len() - 3);
        assert!(Frame::read_from(&mut bytes.as_slice()).is_err());
        // A header length pointing past the end is truncation, not a panic.
        let mut bad = invoke().encode().unwrap();
        bad[5..9].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(
            Frame::decode(&bad[4..]),
            Err(ProtocolError::Truncated)
        ));
    }
}
