//! Docker helpers for the suite: reach the daemon `./scripts/test` started
//! (`FAAS_DOCKER_HOST`), list a server's containers, and run a private `dockerd`
//! for tests that must stop a daemon or remove images without disturbing others.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared daemon's socket URL (`unix:///...`), from `FAAS_DOCKER_HOST`.
pub fn docker_host() -> Option<String> {
    std::env::var("FAAS_DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
}

fn socket_path(host: &str) -> &str {
    host.strip_prefix("unix://").unwrap_or(host)
}

/// Whether a daemon answers `GET /_ping` on `host`.
pub fn ping(host: &str) -> bool {
    let Ok(mut s) = UnixStream::connect(socket_path(host)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}

/// Run the `docker` CLI against `host`; returns stdout (panics on failure).
pub fn docker_cli(host: &str, args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(["-H", host])
        .args(args)
        .output()
        .expect("run the docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ids of every container (running or not) labelled as `owner`'s.
pub fn containers_of(host: &str, owner: &str) -> Vec<String> {
    docker_cli(
        host,
        &[
            "ps",
            "-aq",
            "--filter",
            &format!("label=faas.owner={owner}"),
        ],
    )
    .lines()
    .map(str::to_string)
    .filter(|l| !l.is_empty())
    .collect()
}

/// A `dockerd` of the test's own, in a temporary directory.
pub struct DockerDaemon {
    dir: PathBuf,
    child: Option<Child>,
    /// `unix:///...` socket URL.
    pub host: String,
}

impl DockerDaemon {
    /// Start a daemon in `dir` and wait until it answers.
    pub fn start(dir: &Path) -> DockerDaemon {
        let mut d = DockerDaemon {
            dir: dir.to_path_buf(),
            child: None,
            host: format!("unix://{}/docker.sock", dir.display()),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .expect("dockerd log");
        let child = Command::new("dockerd")
            .args(["--host", &self.host])
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ping(&self.host) {
            assert!(
                Instant::now() < deadline,
                "private dockerd did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Stop the daemon (SIGTERM; it stops its containers) and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Start it again on the same directories.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for DockerDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}
