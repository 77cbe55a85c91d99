//! The host side of the hybrid vsock both VMMs expose (Firecracker itself,
//! QEMU through `vhost-device-vsock`): a Unix socket on which the host writes
//! `CONNECT <port>\n` and the VMM answers `OK <host port>\n` once the guest
//! accepted, or closes the connection when nothing listens on that port.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The Unix socket is not there or refused us (VMM not up yet, or gone).
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The hybrid vsock socket.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The VMM closed the connection: nothing listens on the guest port yet.
    #[error("guest port {0} is not listening")]
    NotListening(u32),
    /// The VMM answered something other than `OK <port>`.
    #[error("unexpected handshake reply {0:?}")]
    BadReply(String),
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
    /// Reading or writing the handshake failed.
    #[error("handshake i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Connect to guest `port` through the hybrid vsock socket `uds`.
pub async fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    let mut stream = UnixStream::connect(uds)
        .await
        .map_err(|source| VsockError::Connect {
            path: uds.display().to_string(),
            source,
        })?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    // Read byte by byte: whatever follows the newline belongs to the guest.
    let reply = tokio::time::timeout(timeout, async {
        let mut line = Vec::with_capacity(16);
        loop {
            let mut b = [0u8; 1];
            if stream.read(&mut b).await? == 0 {
                return Ok::<_, VsockError>(None);
            }
            if b[0] == b'\n' {
                return Ok(Some(line));
            }
            line.push(b[0]);
            if line.len() > 64 {
                return Err(VsockError::BadReply(String::from_utf8_lossy(&line).into()));
            }
        }
    })
    .await
    .map_err(|_| VsockError::Timeout)??;
    let Some(line) = reply else {
        return Err(VsockError::NotListening(port));
    };
    let line = String::from_utf8_lossy(&line).into_owned();
    match line.strip_prefix("OK ") {
        Some(p) if p.trim().parse::<u32>().is_ok() => Ok(stream),
        _ => Err(VsockError::BadReply(line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A fake VMM: answers the handshake like Firecracker, then echoes.
    async fn fake_vmm(listener: UnixListener, accept_port: u32) {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut s = tokio::io::BufReader::new(s);
                let mut line = String::new();
                s.read_line(&mut line).await.unwrap();
                let port: u32 = line
                    .trim()
                    .strip_prefix("CONNECT ")
                    .unwrap()
                    .parse()
                    .unwrap();
                if port != accept_port {
                    return;
                }
                let mut s = s.into_inner();
                s.write_all(b"OK 1073741824\n").await.unwrap();
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
            });
        }
    }

    #[tokio::test]
    async fn handshake_then_data_and_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_vmm(listener, 1234));
        let mut s = connect(&path, 1234, Duration::from_secs(2)).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        assert!(matches!(
            connect(&path, 99, Duration::from_secs(2)).await,
            Err(VsockError::NotListening(99))
        ));
        assert!(matches!(
            connect(&dir.path().join("missing"), 1, Duration::from_secs(1)).await,
            Err(VsockError::Connect { .. })
        ));
    }
}
