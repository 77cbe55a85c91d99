//! Host user ids for sandboxes: every instance runs under a range of host ids
//! of its own, which is no one's account on the host, so per-user kernel
//! limits (inotify instances, pending signals, user namespaces, ...) are never
//! shared between instances, nor with real users.
//!
//! Slot `n` covers host ids `base + n * SLOT_SIZE ..` for [`SLOT_SIZE`] ids;
//! slot 0 is reserved for the platform's own unprivileged helpers (the code
//! writer). A slot is held by an exclusive `flock` on `<dir>/<n>`, so servers
//! sharing a host never hand out the same slot, and a crashed server's slots
//! come free with its file descriptors.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;

use crate::ExecutorError;

/// Ids per slot: a user namespace maps container ids `0..SLOT_SIZE` onto it.
pub const SLOT_SIZE: u32 = 65_536;
/// uid (within the sandbox) that functions run as.
pub const SANDBOX_UID: u32 = 1000;

/// Where the host id ranges are.
#[derive(Debug, Clone)]
pub struct HostIds {
    /// First host id of slot 0.
    pub base: u32,
    /// Number of slots, slot 0 included.
    pub slots: u32,
    /// Directory of the slot lock files (shared by every server on the host).
    pub lock_dir: PathBuf,
}

impl Default for HostIds {
    fn default() -> Self {
        HostIds {
            // 2^30: far above the ids of accounts and of the usual subuid ranges.
            base: 1 << 30,
            slots: 16_384,
            lock_dir: PathBuf::from("/run/faas-ids"),
        }
    }
}

impl HostIds {
    /// The unprivileged host uid the platform writes function code as.
    pub fn code_writer_uid(&self) -> u32 {
        self.base + 1
    }

    /// Take a free slot (not 0). Fails when every slot is held.
    pub fn allocate(&self) -> Result<IdSlot, ExecutorError> {
        std::fs::create_dir_all(&self.lock_dir).map_err(ExecutorError::io(format!(
            "create {}",
            self.lock_dir.display()
        )))?;
        let usable = self.slots.saturating_sub(1).max(1);
        // Start anywhere, so concurrent allocations rarely contend for one file.
        let start = uuid::Uuid::new_v4().as_u128() as u32 % usable;
        for i in 0..usable {
            let slot = 1 + (start + i) % usable;
            let path = self.lock_dir.join(slot.to_string());
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(ExecutorError::io(format!("open {}", path.display())))?;
            match file.try_lock() {
                Ok(()) => {
                    return Ok(IdSlot {
                        host_base: self.base + slot * SLOT_SIZE,
                        _lock: file,
                    })
                }
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => {
                    return Err(ExecutorError::io(format!("lock {}", path.display()))(e))
                }
            }
        }
        Err(ExecutorError::Exhausted(format!(
            "all {usable} host id ranges are in use"
        )))
    }
}

/// A held host id range; free again when dropped.
#[derive(Debug)]
pub struct IdSlot {
    host_base: u32,
    _lock: File,
}

impl IdSlot {
    /// First host id of the range (container id 0 in a user namespace).
    pub fn host_base(&self) -> u32 {
        self.host_base
    }

    /// The host uid of the function user ([`SANDBOX_UID`] in the sandbox).
    pub fn sandbox_host_uid(&self) -> u32 {
        self.host_base + SANDBOX_UID
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exclusive_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let ids = HostIds {
            base: 1 << 30,
            slots: 3,
            lock_dir: dir.path().to_path_buf(),
        };
        let a = ids.allocate().unwrap();
        let b = ids.allocate().unwrap();
        assert_ne!(a.host_base(), b.host_base());
        assert!(a.host_base() >= ids.base + SLOT_SIZE, "slot 0 is reserved");
        assert!(matches!(ids.allocate(), Err(ExecutorError::Exhausted(_))));
        let freed = a.host_base();
        drop(a);
        assert_eq!(ids.allocate().unwrap().host_base(), freed);
    }
}
