//! A minimal QEMU Machine Protocol client: enough to pause a VM, save it to a
//! file, load a saved VM into a fresh QEMU and resume it.
//!
//! QMP is line-delimited JSON on a Unix socket: a greeting, `qmp_capabilities`,
//! then one `{"execute": ...}` per line, each answered by `{"return": ...}` or
//! `{"error": ...}`; asynchronous `{"event": ...}` lines may come in between.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// What went wrong talking to QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached or broke.
    #[error("QMP i/o: {0}")]
    Io(#[from] std::io::Error),
    /// QEMU sent something that is not QMP.
    #[error("QMP: unexpected message {0}")]
    Unexpected(String),
    /// QEMU refused a command.
    #[error("QMP {command}: {message}")]
    Refused {
        /// The command.
        command: String,
        /// QEMU's `error.desc`.
        message: String,
    },
    /// A migration ended in a state other than success.
    #[error("migration {0}")]
    Migration(String),
    /// The operation did not finish in time.
    #[error("QMP: {0} timed out")]
    Timeout(&'static str),
}

/// A QMP session.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connect to `socket` (retrying while QEMU creates it, up to `timeout`) and
    /// leave capabilities negotiation mode.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket).await {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(read),
            writer,
        };
        let greeting = qmp.next_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Unexpected(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn next_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(QmpError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Unexpected(line))
    }

    /// Run `command` and return its `return` value.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let mut req = json!({ "execute": command });
        if let Some(args) = args {
            req["arguments"] = args;
        }
        let mut line = req.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        loop {
            let msg = self.next_message().await?;
            if msg.get("event").is_some() {
                continue;
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            let message = msg
                .pointer("/error/desc")
                .and_then(Value::as_str)
                .map_or_else(|| msg.to_string(), str::to_string);
            return Err(QmpError::Refused {
                command: command.into(),
                message,
            });
        }
    }

    /// Pause the VM and write its whole state (devices and memory) to `file`.
    /// The VM stays paused; [`Qmp::resume`] continues it.
    pub async fn save(&mut self, file: &Path, timeout: Duration) -> Result<(), QmpError> {
        self.execute("stop", None).await?;
        // QEMU 7.2 has no `file:` migration URI; `exec:` runs the command with
        // /bin/sh, so the path is quoted (it is ours, but may hold spaces).
        let uri = format!("exec:cat > {}", shell_quote(&file.to_string_lossy()));
        self.execute("migrate", Some(json!({ "uri": uri }))).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.execute("query-migrate", None).await?;
            match info.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some(s @ ("failed" | "cancelled")) => {
                    let why = info
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    return Err(QmpError::Migration(format!("{s}: {why}")));
                }
                _ if Instant::now() >= deadline => return Err(QmpError::Timeout("save")),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Load a state saved by [`Qmp::save`] into this QEMU (started with
    /// `-incoming defer`) and wait until it is loaded; the VM is then paused.
    pub async fn load(&mut self, file: &Path, timeout: Duration) -> Result<(), QmpError> {
        let uri = format!("exec:cat {}", shell_quote(&file.to_string_lossy()));
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await?;
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.execute("query-status", None).await?;
            match status.get("status").and_then(Value::as_str) {
                Some("paused" | "postmigrate" | "running") => return Ok(()),
                Some("inmigrate") | None => {}
                Some(other) => return Err(QmpError::Migration(format!("left VM {other}"))),
            }
            if Instant::now() >= deadline {
                return Err(QmpError::Timeout("load"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Run the (paused) VM.
    pub async fn resume(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(|_| ())
    }
}

/// `s` as one single-quoted /bin/sh word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    #[test]
    fn quotes_paths_for_the_shell() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    /// A fake QEMU that answers a save: greeting, capabilities, stop, migrate,
    /// one `active` then `completed`; events in between are skipped.
    #[tokio::test]
    async fn save_stops_migrates_and_waits_for_completion() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut seen = Vec::new();
            let mut polls = 0;
            while let Some(line) = lines.next_line().await.unwrap() {
                let req: Value = serde_json::from_str(&line).unwrap();
                let cmd = req["execute"].as_str().unwrap().to_string();
                let reply = match cmd.as_str() {
                    "query-migrate" => {
                        polls += 1;
                        let status = if polls == 1 { "active" } else { "completed" };
                        json!({"return": {"status": status}})
                    }
                    _ => json!({"return": {}}),
                };
                write
                    .write_all(b"{\"event\": \"STOP\", \"timestamp\": {}}\n")
                    .await
                    .unwrap();
                write
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .unwrap();
                seen.push(req);
            }
            seen
        });
        let mut qmp = Qmp::connect(&sock, Duration::from_secs(5)).await.unwrap();
        qmp.save(Path::new("/snap/state"), Duration::from_secs(5))
            .await
            .unwrap();
        drop(qmp);
        let seen = server.await.unwrap();
        let cmds: Vec<&str> = seen
            .iter()
            .map(|r| r["execute"].as_str().unwrap())
            .collect();
        assert_eq!(
            cmds,
            [
                "qmp_capabilities",
                "stop",
                "migrate",
                "query-migrate",
                "query-migrate"
            ]
        );
        assert_eq!(seen[2]["arguments"]["uri"], "exec:cat > '/snap/state'");
    }
}
