//! Duties of the agent when it is the init of a microVM (`--init`): the VM is
//! the isolation boundary, so the agent runs as root there, sets up the
//! guest's filesystems and a memory cgroup for function code, and runs every
//! function process as uid 1000 with no capabilities, under the same seccomp
//! filter and pids limit as the native sandbox (see [`restrict_child`]): the VM
//! is the wall, these keep a function from attacking the guest kernel through
//! the calls it never needs.
//!
//! Also the host's control requests on [`CONTROL_VSOCK_PORT`] (reseeding the
//! RNG and setting the clock after a snapshot restore).

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use faas_common::contract::{
    Reseed, CODE_DISK_LABEL, CONTROL_VSOCK_PORT, DEPS_DISK_LABEL, FUNCTION_UID, GUEST_CODE_DIR,
    GUEST_DEPS_DIR, RESEED_FAILED, RESEED_LEN, RESEED_OK, TMP_DISK_LABEL, TMP_MB_KERNEL_ARG,
};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const FUNCTION_CGROUP: &str = "/sys/fs/cgroup/function";

/// `cgroup.procs` of the function cgroup, NUL-terminated for `open(2)` in a
/// forked child; set once the cgroup exists.
static CGROUP_PROCS: OnceLock<CString> = OnceLock::new();

/// The compiled seccomp program function processes install before `exec`.
static FUNCTION_FILTER: OnceLock<Vec<seccompiler::sock_filter>> = OnceLock::new();

/// Set the guest up. Failures are printed (they reach the VM console, which the
/// host keeps) and the agent carries on with what works.
pub fn init() {
    let mounts: [(&str, &str, &str, libc::c_ulong, &str); 5] = [
        ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, ""),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        ("tmpfs", "/run", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=0755"),
        ("cgroup2", CGROUP_ROOT, "cgroup2", NOSUID_NODEV_NOEXEC, ""),
    ];
    for (src, target, fstype, flags, data) in mounts {
        if let Err(e) = mount(src, target, fstype, flags, data) {
            // devtmpfs is normally moved here by the initramfs already.
            if !(target == "/dev" && e.raw_os_error() == Some(libc::EBUSY)) {
                eprintln!("faas-guest-agent: mount {target}: {e}");
            }
        }
    }
    // SAFETY: valid pointer and length.
    if unsafe { libc::sethostname(c"faas".as_ptr(), 4) } != 0 {
        eprintln!(
            "faas-guest-agent: sethostname: {}",
            std::io::Error::last_os_error()
        );
    }
    mount_tmp();
    mount_disk(CODE_DISK_LABEL, GUEST_CODE_DIR);
    mount_disk(DEPS_DISK_LABEL, GUEST_DEPS_DIR);
    let memory_mb = kernel_arg("faas.memory_mb").and_then(|v| v.parse::<u64>().ok());
    if let Err(e) = function_cgroup(memory_mb) {
        eprintln!("faas-guest-agent: function cgroup: {e}");
    }
    match function_filter() {
        Ok(filter) => {
            let _ = FUNCTION_FILTER.set(filter);
        }
        Err(e) => eprintln!("faas-guest-agent: seccomp filter: {e}"),
    }
}

/// BPF for the sandbox policy ([`faas_common::sandbox`]): the allowlist, the
/// conditional rules (`clone` without namespace flags, the allowed socket
/// families), `clone3` refused with `ENOSYS`, everything else `EPERM`; a call
/// through another ABI (i386, x32) is refused outright, as the native
/// sandbox's profile does.
pub fn function_filter() -> Result<Vec<seccompiler::sock_filter>, String> {
    use faas_common::sandbox::{ArgOp, ALLOWED_SYSCALLS, CONDITIONAL_SYSCALLS, REFUSED_ERRNO};
    let mut rules: Vec<serde_json::Value> = ALLOWED_SYSCALLS
        .iter()
        .map(|name| serde_json::json!({ "syscall": name }))
        .collect();
    for rule in CONDITIONAL_SYSCALLS {
        let args: Vec<serde_json::Value> = rule
            .checks
            .iter()
            .map(|c| match c.op {
                ArgOp::Eq => serde_json::json!({
                    "index": c.index, "type": "qword", "op": "eq", "val": c.value
                }),
                ArgOp::MaskedEq(mask) => serde_json::json!({
                    "index": c.index, "type": "qword", "op": {"masked_eq": mask}, "val": c.value
                }),
            })
            .collect();
        rules.push(serde_json::json!({ "syscall": rule.name, "args": args }));
    }
    let policy = serde_json::json!({
        "function": {
            "mismatch_action": { "errno": REFUSED_ERRNO },
            "match_action": "allow",
            "filter": rules,
        }
    });
    let mut programs = seccompiler::compile_from_json(
        policy.to_string().as_bytes(),
        seccompiler::TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    let program = programs
        .remove("function")
        .ok_or("the compiled policy lacks its filter")?;
    // seccompiler kills on a foreign architecture (i386) but cannot see x32
    // calls, which share x86-64's audit arch with bit 30 of the number set:
    // refuse those first, and answer clone3 with ENOSYS (its flags live in
    // memory the filter cannot read; the C library then uses clone). Its own
    // program follows, and BPF jumps are relative.
    const X32_BIT: u32 = 0x4000_0000;
    const NR_OFFSET: u32 = 0;
    let stmt = |code: u32, k: u32| seccompiler::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| seccompiler::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut filter = vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, NR_OFFSET),
        jump(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, X32_BIT, 0, 1),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_clone3 as u32,
            0,
            1,
        ),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | faas_common::sandbox::ENOSYS,
        ),
    ];
    filter.extend(program);
    Ok(filter)
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> std::io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(std::io::Error::other);
    let (src, target, fstype, data) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The value of `key=value` on the kernel command line.
fn kernel_arg(key: &str) -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

/// Mount the virtio disk whose ext4 label is `label` read-only at `target`;
/// absent disks are normal (no code for `/execute`, no dependencies).
fn mount_disk(label: &str, target: &str) {
    if let Some(dev) = find_disk(label) {
        let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
        if let Err(e) = mount(&dev, target, "ext4", flags, "") {
            eprintln!("faas-guest-agent: mount {dev} at {target}: {e}");
        }
    }
}

/// `/tmp`: the VM's own writable disk ([`TMP_DISK_LABEL`]) when the host
/// attached one, else a tmpfs of the function's `ephemeral_mb` (the
/// [`TMP_MB_KERNEL_ARG`] argument; unbounded but by memory without it).
/// Either way world-writable and sticky, without devices or setuid.
fn mount_tmp() {
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    if let Some(dev) = find_disk(TMP_DISK_LABEL) {
        // `noinit_itable`: the host made the inode tables sparse zeros
        // already; zeroing them would fill the disk's file on the host.
        match mount(
            &dev,
            "/tmp",
            "ext4",
            flags | libc::MS_NOATIME,
            "noinit_itable",
        ) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                if let Err(e) =
                    std::fs::set_permissions("/tmp", std::fs::Permissions::from_mode(0o1777))
                {
                    eprintln!("faas-guest-agent: chmod /tmp: {e}");
                }
                // An empty /tmp, as on a tmpfs.
                let _ = std::fs::remove_dir("/tmp/lost+found");
                return;
            }
            Err(e) => eprintln!("faas-guest-agent: mount {dev} at /tmp: {e}; a tmpfs instead"),
        }
    }
    let size = kernel_arg(TMP_MB_KERNEL_ARG)
        .and_then(|v| v.parse::<u64>().ok())
        .map(|mb| format!(",size={mb}m"))
        .unwrap_or_default();
    if let Err(e) = mount("tmpfs", "/tmp", "tmpfs", flags, &format!("mode=1777{size}")) {
        eprintln!("faas-guest-agent: mount /tmp: {e}");
    }
}

/// The virtio disk (`/dev/vdX`) whose ext4 label is `label`.
fn find_disk(label: &str) -> Option<String> {
    let entries = std::fs::read_dir("/sys/block").ok()?;
    entries.flatten().find_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dev = format!("/dev/{name}");
        (name.starts_with("vd") && ext4_label(&dev).as_deref() == Some(label)).then_some(dev)
    })
}

/// `s_volume_name` of an ext4 superblock (offset 1024 + 0x78, 16 bytes).
fn ext4_label(dev: &str) -> Option<String> {
    let mut f = std::fs::File::open(dev).ok()?;
    let mut sb = [0u8; 2048];
    f.read_exact(&mut sb).ok()?;
    // ext2/3/4 magic 0xEF53 at superblock offset 0x38.
    if sb[1024 + 0x38..1024 + 0x3a] != [0x53, 0xef] {
        return None;
    }
    let raw = &sb[1024 + 0x78..1024 + 0x88];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// A cgroup every function process joins, capped at the function's memory so
/// that the OOM killer picks the function, never the agent.
fn function_cgroup(memory_mb: Option<u64>) -> std::io::Result<()> {
    std::fs::write(
        format!("{CGROUP_ROOT}/cgroup.subtree_control"),
        "+memory +pids",
    )?;
    std::fs::create_dir_all(FUNCTION_CGROUP)?;
    std::fs::write(
        format!("{FUNCTION_CGROUP}/pids.max"),
        faas_common::sandbox::DEFAULT_PIDS_LIMIT.to_string(),
    )?;
    if let Some(mb) = memory_mb {
        std::fs::write(
            format!("{FUNCTION_CGROUP}/memory.max"),
            (mb * 1024 * 1024).to_string(),
        )?;
    }
    // The guest has no swap, but say so in case a kernel gains one.
    let _ = std::fs::write(format!("{FUNCTION_CGROUP}/memory.swap.max"), "0");
    let procs =
        CString::new(format!("{FUNCTION_CGROUP}/cgroup.procs")).map_err(std::io::Error::other)?;
    let _ = CGROUP_PROCS.set(procs);
    Ok(())
}

/// Freeze (or thaw) every function process of a VM: between invocations
/// nothing a handler left running gets CPU. Does nothing outside a VM, where
/// the host freezes the whole sandbox instead.
pub fn freeze_functions(frozen: bool) {
    if CGROUP_PROCS.get().is_none() {
        return;
    }
    let path = format!("{FUNCTION_CGROUP}/cgroup.freeze");
    if let Err(e) = std::fs::write(&path, if frozen { "1" } else { "0" }) {
        eprintln!("faas-guest-agent: {path}: {e}");
    }
}

/// When the agent runs as root (in a VM), make `cmd`'s child join the function
/// cgroup, empty its capability bounding set, become uid/gid [`FUNCTION_UID`]
/// with no supplementary groups and no capabilities (a setuid away from 0
/// clears them), set no-new-privileges and install the seccomp filter.
/// Elsewhere the agent already runs as the sandbox user and this does nothing.
pub fn restrict_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let procs = CGROUP_PROCS.get().map(|p| p.as_ptr() as usize);
    let filter = FUNCTION_FILTER
        .get()
        .map(|f| (f.as_ptr() as usize, f.len() as u16));
    // SAFETY: only async-signal-safe calls (open, write, close, prctl,
    // setgroups, setgid, setuid, seccomp) run between fork and exec; `procs`
    // and `filter` point into statics that outlive the child.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(path) = procs {
                let fd = libc::open(
                    path as *const libc::c_char,
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            // Drop every capability from the bounding set, up to the first
            // number this kernel does not know.
            let mut cap = 0;
            while libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) == 0 {
                cap += 1;
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(FUNCTION_UID) != 0
                || libc::setuid(FUNCTION_UID) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            match filter {
                Some((ptr, len)) => install_filter(ptr as *const libc::sock_filter, len),
                None => Ok(()),
            }
        });
    }
}

/// Install the BPF program of `len` instructions at `filter` on the calling
/// thread (no-new-privileges must be set). Async-signal-safe: one syscall, no
/// allocation, so it may run between fork and exec.
///
/// # Safety
///
/// `filter` must point to `len` valid instructions.
unsafe fn install_filter(filter: *const libc::sock_filter, len: u16) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len,
        filter: filter as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points to a valid program for the call's duration.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A listening AF_VSOCK stream socket on `port` (any CID).
pub fn vsock_listen(port: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes.
    if unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: valid socket.
    if unsafe { libc::listen(sock.as_raw_fd(), 16) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

/// Accept one connection on a listening socket, as a `File` (plain read/write).
pub fn accept(listener: RawFd) -> std::io::Result<std::fs::File> {
    loop {
        // SAFETY: null address arguments are allowed.
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a new descriptor we own.
            return Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether the host asked for the virtio-serial channel (QEMU with snapshots)
/// instead of vsock.
pub fn serial_transport() -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .any(|arg| arg == faas_common::protocol::SERIAL_TRANSPORT_ARG)
}

/// The virtio-serial port called `name`, opened for reading and writing. The
/// port appears when `virtio_console` has probed; wait up to 5 s for it.
pub fn open_port(name: &str) -> std::io::Result<std::fs::File> {
    for _ in 0..500 {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let port = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if port.trim() == name {
                    let dev = std::path::Path::new("/dev").join(entry.file_name());
                    return std::fs::OpenOptions::new().read(true).write(true).open(dev);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no virtio-serial port named {name}"),
    ))
}

/// Answer one reseed request read from `conn`.
fn serve_reseed(conn: &mut (impl Read + Write)) -> std::io::Result<()> {
    let mut req = [0u8; RESEED_LEN];
    conn.read_exact(&mut req)?;
    let reply: &[u8] = match reseed(&Reseed::decode(&req)) {
        Ok(()) => RESEED_OK,
        Err(e) => {
            eprintln!("faas-guest-agent: reseed: {e}");
            RESEED_FAILED
        }
    };
    conn.write_all(reply)
}

/// Serve reseed requests from a thread of its own, so a restored clone can be
/// fixed up while the main connection is re-established: on vsock port
/// [`CONTROL_VSOCK_PORT`], or on the `faas.control` virtio-serial port.
pub fn spawn_control_listener() {
    if serial_transport() {
        let mut port = match open_port(faas_common::protocol::CONTROL_PORT_NAME) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("faas-guest-agent: control port: {e}");
                return;
            }
        };
        std::thread::spawn(move || loop {
            // A read of a port with no host on the other end ends at once
            // (EOF): wait for the host rather than spin.
            if serve_reseed(&mut port).is_err() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        return;
    }
    let listener = match vsock_listen(CONTROL_VSOCK_PORT) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("faas-guest-agent: control port {CONTROL_VSOCK_PORT}: {e}");
            return;
        }
    };
    std::thread::spawn(move || loop {
        let Ok(mut conn) = accept(listener.as_raw_fd()) else {
            continue;
        };
        let _ = serve_reseed(&mut conn);
    });
}

/// Mix the host's randomness into the kernel pool, credit it, force the CRNG to
/// reseed (so no two clones of one snapshot share a random stream), and set the
/// clock to the host's time (a snapshot carries its own, stale, time).
fn reseed(req: &Reseed) -> std::io::Result<()> {
    let nanos = req.unix_nanos;
    let seed = &req.seed[..];
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // Linux ioctl numbers: RNDADDENTROPY = _IOW('R', 0x03, int[2]), RNDRESEEDCRNG = _IO('R', 0x07).
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    // SAFETY: `info` is a valid rand_pool_info with buf_size bytes of data.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let ts = libc::timespec {
        tv_sec: (nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_of_a_non_ext4_file_is_none() {
        let dir = std::env::temp_dir().join(format!("faas-agent-label-{}", std::process::id()));
        std::fs::write(&dir, [0u8; 4096]).unwrap();
        assert_eq!(ext4_label(dir.to_str().unwrap()), None);
        let mut sb = vec![0u8; 4096];
        sb[1024 + 0x38] = 0x53;
        sb[1024 + 0x39] = 0xef;
        sb[1024 + 0x78..1024 + 0x78 + 9].copy_from_slice(b"faas-code");
        std::fs::write(&dir, &sb).unwrap();
        assert_eq!(
            ext4_label(dir.to_str().unwrap()).as_deref(),
            Some("faas-code")
        );
        std::fs::remove_file(&dir).unwrap();
    }

    /// Run `sh -c script` under the function filter.
    fn under_filter(script: &str) -> std::process::Output {
        use std::os::unix::process::CommandExt;
        let filter = function_filter().unwrap();
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", script]);
        // SAFETY: prctl and seccomp only, on a program that outlives the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                install_filter(filter.as_ptr().cast(), filter.len() as u16)
            });
        }
        cmd.output().unwrap()
    }

    #[test]
    fn the_filter_refuses_blocked_calls_and_allows_the_rest() {
        let ok = under_filter("echo fine");
        assert!(ok.status.success(), "{ok:?}");
        assert_eq!(ok.stdout, b"fine\n");
        // unshare(2) and mount(2) are blocked whatever the caller's privileges.
        for script in ["unshare --user true", "mount -t tmpfs none /mnt"] {
            let out = under_filter(script);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{script}: {out:?}");
            assert!(
                stderr.contains("Operation not permitted") || stderr.contains("permission denied"),
                "{script}: {stderr}"
            );
        }
    }
}
