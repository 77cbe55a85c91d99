//! Policy every sandbox kind enforces on function processes: the seccomp
//! allowlist (x86-64), and the limits shared by all kinds.
//!
//! The allowlist follows Docker's default profile, minus what a function never
//! needs and what has been the road to kernel exploits: namespaces (`unshare`,
//! `setns`, `clone`/`clone3` with namespace flags), mounts, `ptrace` and
//! cross-process memory access, `bpf`, `perf_event_open`, `io_uring_*`,
//! `userfaultfd`, keyrings, module loading, `kexec`, clock setting, and every
//! socket family but Unix, IPv4, IPv6 and routing netlink (no `AF_VSOCK`,
//! `AF_PACKET`, `AF_ALG` or netfilter netlink). Anything not listed fails with
//! `EPERM`; `clone3` fails with `ENOSYS`, so the C library falls back to
//! `clone`, whose flags the filter can inspect. Only the x86-64 ABI is allowed:
//! i386 and x32 calls are refused.
//!
//! Three consumers render this one policy: the native sandbox's OCI spec and
//! the Docker sandbox's profile ([`oci_profile`]), and the microVM guest agent
//! (compiled with `seccompiler`).

use serde_json::{json, Value};

/// System calls allowed with any arguments.
pub const ALLOWED_SYSCALLS: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_waitv",
    "futimesat",
    "get_mempolicy",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "map_shadow_stack",
    "mbind",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_mempolicy",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// How an argument is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgOp {
    /// `arg == value`.
    Eq,
    /// `arg & mask == value`.
    MaskedEq(u64),
}

/// One condition on an argument of a system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCheck {
    /// Argument index, 0-based.
    pub index: u8,
    /// Comparison.
    pub op: ArgOp,
    /// Value compared against.
    pub value: u64,
}

/// A call allowed only when every one of its checks holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConditionalRule {
    /// System call name.
    pub name: &'static str,
    /// Conditions, all of which must hold.
    pub checks: &'static [ArgCheck],
}

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
/// | CLONE_NEWPID | CLONE_NEWNET`: `clone` may use none of them.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

const fn eq(index: u8, value: u64) -> ArgCheck {
    ArgCheck {
        index,
        op: ArgOp::Eq,
        value,
    }
}

/// Calls allowed with some arguments only.
pub const CONDITIONAL_SYSCALLS: &[ConditionalRule] = &[
    // Threads and processes, never new namespaces.
    ConditionalRule {
        name: "clone",
        checks: &[ArgCheck {
            index: 0,
            op: ArgOp::MaskedEq(CLONE_NAMESPACE_FLAGS),
            value: 0,
        }],
    },
    // Socket families: Unix, IPv4, IPv6, and netlink for routing only (the C
    // library asks it which address families are configured).
    ConditionalRule {
        name: "socket",
        checks: &[eq(0, 1)],
    },
    ConditionalRule {
        name: "socket",
        checks: &[eq(0, 2)],
    },
    ConditionalRule {
        name: "socket",
        checks: &[eq(0, 10)],
    },
    ConditionalRule {
        name: "socket",
        checks: &[eq(0, 16), eq(2, 0)],
    },
    // personality(2): the values Docker allows (Linux, 32-bit uname, query).
    ConditionalRule {
        name: "personality",
        checks: &[eq(0, 0)],
    },
    ConditionalRule {
        name: "personality",
        checks: &[eq(0, 8)],
    },
    ConditionalRule {
        name: "personality",
        checks: &[eq(0, 0x20000)],
    },
    ConditionalRule {
        name: "personality",
        checks: &[eq(0, 0x20008)],
    },
    ConditionalRule {
        name: "personality",
        checks: &[eq(0, 0xffff_ffff)],
    },
];

/// Calls refused with `ENOSYS` rather than `EPERM`: `clone3` passes its flags
/// in memory a filter cannot read, and on `ENOSYS` the C library uses `clone`.
pub const ENOSYS_SYSCALLS: &[&str] = &["clone3"];

/// errno of every other refused call.
pub const REFUSED_ERRNO: u32 = 1; // EPERM
/// errno of [`ENOSYS_SYSCALLS`].
pub const ENOSYS: u32 = 38;

/// The policy as an OCI runtime spec `linux.seccomp` object, which is also the
/// format of a Docker seccomp profile.
pub fn oci_profile() -> Value {
    let mut syscalls = vec![json!({
        "names": ALLOWED_SYSCALLS,
        "action": "SCMP_ACT_ALLOW",
    })];
    for rule in CONDITIONAL_SYSCALLS {
        let args: Vec<Value> = rule
            .checks
            .iter()
            .map(|c| match c.op {
                ArgOp::Eq => json!({"index": c.index, "value": c.value, "op": "SCMP_CMP_EQ"}),
                ArgOp::MaskedEq(mask) => json!({
                    "index": c.index, "value": mask, "valueTwo": c.value,
                    "op": "SCMP_CMP_MASKED_EQ"
                }),
            })
            .collect();
        syscalls.push(json!({
            "names": [rule.name],
            "action": "SCMP_ACT_ALLOW",
            "args": args,
        }));
    }
    syscalls.push(json!({
        "names": ENOSYS_SYSCALLS,
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": ENOSYS,
    }));
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": REFUSED_ERRNO,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": syscalls,
    })
}

/// Most processes (and threads) a function instance may have at once: enough for
/// any runtime's worker threads, few enough that a fork bomb stalls harmlessly.
pub const DEFAULT_PIDS_LIMIT: i64 = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_calls_are_not_allowed() {
        for call in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "bpf",
            "perf_event_open",
            "io_uring_setup",
            "io_uring_enter",
            "userfaultfd",
            "keyctl",
            "add_key",
            "request_key",
            "init_module",
            "finit_module",
            "kexec_load",
            "open_by_handle_at",
            "name_to_handle_at",
            "clock_settime",
            "settimeofday",
            "reboot",
            "swapon",
            "chroot",
            "syslog",
            "clone3",
            "socket",
            "clone",
        ] {
            assert!(!ALLOWED_SYSCALLS.contains(&call), "{call} allowed outright");
        }
    }

    #[test]
    fn the_list_is_sorted_and_unique() {
        let mut sorted = ALLOWED_SYSCALLS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, ALLOWED_SYSCALLS);
    }

    #[test]
    fn oci_profile_shape() {
        let p = oci_profile();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["architectures"], json!(["SCMP_ARCH_X86_64"]));
        let clone = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["names"] == json!(["clone"]))
            .unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], CLONE_NAMESPACE_FLAGS);
        assert_eq!(clone["args"][0]["valueTwo"], 0);
        let vsock_allowed = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["names"] == json!(["socket"]) && s["args"][0]["value"] == 40);
        assert!(!vsock_allowed);
    }
}
