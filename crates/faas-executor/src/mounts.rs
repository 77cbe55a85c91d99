//! The few mount system calls the host side makes itself (no `mount`
//! process: these sit on cold-start paths). All of them block; call them off
//! the async threads.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `mount(2)` of `source` (a device, or `None` for a pseudo filesystem) at
/// `target`.
pub(crate) fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> std::io::Result<()> {
    let (source, target) = (CString::new(source)?, c_path(target)?);
    let (fstype, data) = (CString::new(fstype)?, CString::new(data)?);
    // SAFETY: NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
}

/// Bind `source` at `target`. The new mount keeps `source`'s per-mount flags
/// (read-only, `nosuid`, `nodev`), and so do the copies that propagation
/// makes of it.
pub(crate) fn bind(source: &Path, target: &Path) -> std::io::Result<()> {
    let (source, target) = (c_path(source)?, c_path(target)?);
    // SAFETY: NUL-terminated strings that outlive the call; null type and data
    // are what a bind mount takes.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
}

/// Change the propagation type of the mount at `target` (`MS_PRIVATE`,
/// `MS_SHARED`, ...).
pub(crate) fn propagation(target: &Path, kind: libc::c_ulong) -> std::io::Result<()> {
    let target = c_path(target)?;
    // SAFETY: a NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            kind,
            std::ptr::null(),
        )
    })
}

/// Unmount `point` if something is mounted there; lazily if it is busy (a
/// process of the instance still dying), so the host never keeps it.
pub(crate) fn unmount(point: &Path) {
    let Ok(point) = c_path(point) else {
        return;
    };
    // SAFETY: a NUL-terminated string that outlives the calls.
    unsafe {
        if libc::umount2(point.as_ptr(), 0) != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY)
        {
            libc::umount2(point.as_ptr(), libc::MNT_DETACH);
        }
    }
}
