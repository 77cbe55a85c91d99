//! Writing a validated tree to disk without ever following a link.
//!
//! Every path is resolved relative to the tree's directory file descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`: the
//! kernel refuses any walk that would leave the directory or cross a link,
//! whatever is on disk. Directories come first, then files (created with
//! `O_EXCL | O_NOFOLLOW`, so nothing existing is ever opened), links last (made
//! with `symlinkat` in a parent opened the same way, never traversed).

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::tree::{CodeTree, Entry};
use crate::ArchiveError;

/// Write `tree` into the empty directory `dir`.
pub(crate) fn write_tree(tree: &CodeTree, dir: &Path) -> Result<(), ArchiveError> {
    let root = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(ArchiveError::errno(format!("open {}", dir.display())))?;
    // SAFETY: `open` returned a new descriptor that nothing else owns.
    let root = unsafe { OwnedFd::from_raw_fd(root) };
    let dir_mode = Mode::from_bits_truncate(0o755);
    // Parents sort before their children ("a" < "a/b").
    for d in &tree.dirs {
        let (parent, name) = split(d);
        let parent = open_beneath(&root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        nix::sys::stat::mkdirat(Some(parent.as_raw_fd()), name, dir_mode)
            .map_err(ArchiveError::errno(format!("create directory {d}")))?;
    }
    for (path, entry) in &tree.entries {
        if let Entry::File { data, executable } = entry {
            let mode = if *executable { 0o755 } else { 0o644 };
            let fd = open_beneath_mode(
                &root,
                path,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(mode),
            )?;
            let mut file = std::fs::File::from(fd);
            file.write_all(data)
                .map_err(ArchiveError::io(format!("write {path}")))?;
            // The umask may have narrowed the mode given at creation.
            nix::sys::stat::fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode))
                .map_err(ArchiveError::errno(format!("chmod {path}")))?;
        }
    }
    for (path, entry) in &tree.entries {
        if let Entry::Symlink(target) = entry {
            let (parent, name) = split(path);
            let parent = open_beneath(&root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
            nix::unistd::symlinkat(target.as_str(), Some(parent.as_raw_fd()), name)
                .map_err(ArchiveError::errno(format!("create link {path}")))?;
        }
    }
    for d in std::iter::once(".").chain(tree.dirs.iter().map(String::as_str)) {
        let fd = open_beneath(&root, d, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        nix::sys::stat::fchmod(fd.as_raw_fd(), dir_mode)
            .map_err(ArchiveError::errno(format!("chmod {d}")))?;
    }
    Ok(())
}

/// `a/b/c` -> (`a/b`, `c`); `c` -> (`.`, `c`).
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or((".", path))
}

fn open_beneath(root: &OwnedFd, path: &str, flags: OFlag) -> Result<OwnedFd, ArchiveError> {
    open_beneath_mode(root, path, flags, Mode::empty())
}

/// Open `path` below `root`; the kernel refuses to leave `root`, to follow any
/// link (magic links included) or to cross a mount point on the way.
fn open_beneath_mode(
    root: &OwnedFd,
    path: &str,
    flags: OFlag,
    mode: Mode,
) -> Result<OwnedFd, ArchiveError> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = nix::fcntl::openat2(root.as_raw_fd(), path, how)
        .map_err(ArchiveError::errno(format!("open {path} in the code tree")))?;
    // SAFETY: `openat2` returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Make the calling thread (only it) run as `uid`:`uid` with no supplementary
/// groups. Leaving uid 0 this way clears the thread's capabilities, so from
/// here on the kernel's permission checks apply to it in full. The raw system
/// calls matter: the libc wrappers would change every thread of the process.
pub(crate) fn drop_thread_privileges(uid: u32) -> std::io::Result<()> {
    let check = |rc: libc::c_long| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls on this thread's credentials, valid arguments.
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            0,
            std::ptr::null::<libc::gid_t>(),
        ))?;
        check(libc::syscall(libc::SYS_setresgid, uid, uid, uid))?;
        check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
    }
    Ok(())
}
