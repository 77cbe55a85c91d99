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
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => {
                let v = it.next().ok_or("--listen needs a value")?;
                return v
                    .strip_prefix("unix:")
                    .map(str::to_string)
                    .ok_or_else(|| format!("unsupported listen address {v:?} (use unix:PATH)"));
            }
            "--help" | "-h" => {
                return Err("usage: faas-guest-agent --listen unix:PATH".into());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Err("usage: faas-guest-agent --listen unix:PATH".into())
}
