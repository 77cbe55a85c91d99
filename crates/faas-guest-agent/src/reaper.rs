//! PID 1 duties. A function may leave orphans (a shell script's background job);
//! the kernel re-parents them to PID 1, which must reap them or they stay zombies
//! and count against the sandbox's pids limit.

/// Fork; the parent stays PID 1 and reaps every child until the agent (the child)
/// exits, then exits with the agent's status. Returns only in the child.
pub fn become_child_of_reaper() {
    // SAFETY: called from main() before any other thread is started.
    let child = unsafe { libc::fork() };
    if child < 0 {
        // Without a reaper the agent still works; zombies are the only cost.
        eprintln!("faas-guest-agent: fork for reaper failed; running without one");
        return;
    }
    if child == 0 {
        return;
    }
    loop {
        let mut status = 0;
        // SAFETY: plain libc call with a valid pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == child {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            std::process::exit(code);
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            std::process::exit(1);
        }
    }
}
