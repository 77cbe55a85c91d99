//! `faas-guest-agent`: the process that runs first inside every sandbox.
//!
//! ```text
//! faas-guest-agent --connect unix:/run/faas/agent.sock   # in a container
//! faas-guest-agent --init --listen vsock:1234            # init of a microVM
//! ```
//!
//! In a container the host listens and the agent connects: the socket's
//! directory is read-only to the sandbox, so a function can write nothing
//! there, and once the agent is connected the host stops listening.
//!
//! As init, `faas.transport=serial` on the kernel command line replaces the
//! vsock listener with the virtio-serial port `faas.agent` (QEMU guests that
//! are saved and restored: QEMU cannot migrate its vsock device).
//!
//! With `--init` it first sets the VM up (see [`vm`]), binds its listener,
//! prints `FAAS_AGENT_READY` on the console (so the host knows when to
//! connect without polling), then serves one host connection at a time,
//! speaking [`faas_common::protocol`] frames. When it runs as PID 1 it first
//! forks so that PID 1 only reaps orphans (the job `tini` does for Docker) and
//! the agent proper is its child.

#![deny(clippy::undocumented_unsafe_blocks)]

mod reaper;
mod runtime;
mod server;
mod vm;

use std::process::ExitCode;

use server::Listen;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (vm_init, listen) = match parse_args(&args) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("faas-guest-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if vm_init {
        vm::init();
    }
    // A VM that may be saved and restored talks over virtio-serial (see vm).
    let listen = if vm_init && vm::serial_transport() {
        Listen::Serial(faas_common::protocol::AGENT_PORT_NAME.into())
    } else {
        listen
    };
    if std::process::id() == 1 {
        // Must happen before any thread exists: fork() in a threaded process is unsafe.
        reaper::become_child_of_reaper();
    }
    if vm_init {
        vm::spawn_control_listener();
    }
    match server::serve(&listen) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faas-guest-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `[--init] --listen unix:PATH|vsock:PORT` or `--connect unix:PATH`.
fn parse_args(args: &[String]) -> Result<(bool, Listen), String> {
    const USAGE: &str =
        "usage: faas-guest-agent [--init] --listen unix:PATH|vsock:PORT | --connect unix:PATH";
    let (init, rest) = match args.get(1..) {
        Some([flag, rest @ ..]) if flag == "--init" => (true, rest),
        Some(rest) => (false, rest),
        None => return Err(USAGE.into()),
    };
    let [flag, value] = rest else {
        return Err(USAGE.into());
    };
    if flag == "--connect" && !init {
        return value
            .strip_prefix("unix:")
            .map(|path| (false, Listen::Connect(path.to_string())))
            .ok_or_else(|| format!("unsupported address {value:?} (use unix:PATH)"));
    }
    if flag != "--listen" {
        return Err(USAGE.into());
    }
    let listen = if let Some(path) = value.strip_prefix("unix:") {
        Listen::Unix(path.to_string())
    } else if let Some(port) = value.strip_prefix("vsock:") {
        Listen::Vsock(
            port.parse()
                .map_err(|_| format!("bad vsock port in {value:?}"))?,
        )
    } else {
        return Err(format!(
            "unsupported listen address {value:?} (use unix:PATH or vsock:PORT)"
        ));
    };
    Ok((init, listen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn listen_address() {
        assert_eq!(
            parse_args(&args(&["agent", "--listen", "unix:/run/faas/agent.sock"])),
            Ok((false, Listen::Unix("/run/faas/agent.sock".into())))
        );
        assert_eq!(
            parse_args(&args(&["agent", "--init", "--listen", "vsock:1234"])),
            Ok((true, Listen::Vsock(1234)))
        );
        assert_eq!(
            parse_args(&args(&["agent", "--connect", "unix:/run/faas/agent.sock"])),
            Ok((false, Listen::Connect("/run/faas/agent.sock".into())))
        );
        assert!(parse_args(&args(&["agent", "--connect", "vsock:1"])).is_err());
        assert!(parse_args(&args(&["agent", "--listen", "tcp:1"])).is_err());
        assert!(parse_args(&args(&["agent", "--listen", "vsock:x"])).is_err());
        assert!(parse_args(&args(&["agent"])).is_err());
        assert!(parse_args(&args(&["agent", "--listen"])).is_err());
        assert!(parse_args(&args(&["agent", "--init"])).is_err());
    }
}
