//! `faas-guest-agent`: the process that runs first inside every sandbox.
//!
//! ```text
//! faas-guest-agent --listen unix:/run/faas/agent.sock
//! ```
//!
//! It binds the socket, prints `FAAS_AGENT_READY` on stdout (so the host knows when
//! to connect without polling), then serves one host connection at a time, speaking
//! [`faas_common::protocol`] frames. When it runs as PID 1 it first forks so that PID 1
//! only reaps orphans (the job `tini` does for Docker) and the agent proper is its child.

mod reaper;
mod runtime;
mod server;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let listen = match parse_listen(&args) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("faas-guest-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if std::process::id() == 1 {
        // Must happen before any thread exists: fork() in a threaded process is unsafe.
        reaper::become_child_of_reaper();
    }
    match server::serve(&listen) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faas-guest-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_listen(args: &[String]) -> Result<String, String> {
    const USAGE: &str = "usage: faas-guest-agent --listen unix:PATH";
    match args.get(1..) {
        Some([flag, value]) if flag == "--listen" => value
            .strip_prefix("unix:")
            .map(str::to_string)
            .ok_or_else(|| format!("unsupported listen address {value:?} (use unix:PATH)")),
        _ => Err(USAGE.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listen;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn listen_address() {
        assert_eq!(
            parse_listen(&args(&["agent", "--listen", "unix:/run/faas/agent.sock"])),
            Ok("/run/faas/agent.sock".into())
        );
        assert!(parse_listen(&args(&["agent", "--listen", "tcp:1"])).is_err());
        assert!(parse_listen(&args(&["agent"])).is_err());
        assert!(parse_listen(&args(&["agent", "--listen"])).is_err());
    }
}
