//! The host-guest contract: every name, path, port and bound that the host and
//! the guest agent must agree on, in one place. A mismatch here would only
//! show when a sandbox starts, so neither side spells any of these itself.

/// Where the guest agent is installed in every runtime image.
pub const AGENT_PATH: &str = "/opt/faas/bin/faas-guest-agent";
/// Directory of the language bootstraps in every runtime image.
pub const BOOTSTRAP_DIR: &str = "/opt/faas/bootstrap";

/// Where the function's code appears in every sandbox (read-only).
pub const GUEST_CODE_DIR: &str = "/var/task";
/// Where installed dependencies appear in every sandbox (read-only).
pub const GUEST_DEPS_DIR: &str = "/opt/faas/deps";

/// Directory of the agent's socket in container sandboxes (read-only there;
/// the host listens, the agent connects).
pub const GUEST_SOCKET_DIR: &str = "/run/faas";
/// The agent's socket in [`GUEST_SOCKET_DIR`].
pub const AGENT_SOCKET_NAME: &str = "agent.sock";

/// Scratch directory of a build sandbox (a tmpfs of the layer's size limit)
/// where the installer writes.
pub const BUILD_SCRATCH_DIR: &str = "/opt/faas/build/out";
/// Where a build sandbox sees the host directory that receives the layer.
pub const BUILD_LAYER_DIR: &str = "/opt/faas/build/layer";

/// uid and gid function code runs as inside every sandbox.
pub const FUNCTION_UID: u32 = 1000;

/// ext4 label of a microVM's code disk (mounted at [`GUEST_CODE_DIR`]).
pub const CODE_DISK_LABEL: &str = "faas-code";
/// ext4 label of a microVM's dependency disk (mounted at [`GUEST_DEPS_DIR`]).
pub const DEPS_DISK_LABEL: &str = "faas-deps";
/// ext4 label of a microVM's writable ephemeral-storage disk, mounted at
/// `/tmp` in place of the tmpfs when the VM has one.
pub const TMP_DISK_LABEL: &str = "faas-tmp";
/// Kernel argument that sizes a microVM's `/tmp` tmpfs (MiB) when it has no
/// [`TMP_DISK_LABEL`] disk.
pub const TMP_MB_KERNEL_ARG: &str = "faas.tmp_mb";
/// Ephemeral storage up to this many MiB is a tmpfs (charged to the
/// instance's memory, as small as it is); above, a disk of its own, so a
/// large `/tmp` never costs memory.
pub const TMPFS_MAX_MB: u32 = 64;

/// vsock port of the agent's frame protocol in a microVM.
pub const AGENT_VSOCK_PORT: u32 = crate::protocol::AGENT_VSOCK_PORT;
/// vsock port of the agent's control channel (reseed after a snapshot restore).
pub const CONTROL_VSOCK_PORT: u32 = 1235;

/// The control channel's one request: make a restored clone unique. The
/// host's time (Unix nanoseconds) and 64 bytes of its randomness; the agent
/// answers [`RESEED_OK`] or [`RESEED_FAILED`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reseed {
    /// Wall-clock time to set, nanoseconds since the Unix epoch.
    pub unix_nanos: u64,
    /// Entropy to mix into the guest's pool.
    pub seed: [u8; 64],
}

/// Bytes of an encoded [`Reseed`].
pub const RESEED_LEN: usize = 72;
/// The agent's answer to a reseed it performed.
pub const RESEED_OK: &[u8; 3] = b"OK\n";
/// The agent's answer to a reseed that failed (same length as [`RESEED_OK`]).
pub const RESEED_FAILED: &[u8; 3] = b"ER\n";

impl Reseed {
    /// Wire form: the time (big endian), then the seed.
    pub fn encode(&self) -> [u8; RESEED_LEN] {
        let mut out = [0u8; RESEED_LEN];
        out[..8].copy_from_slice(&self.unix_nanos.to_be_bytes());
        out[8..].copy_from_slice(&self.seed);
        out
    }

    /// Inverse of [`Reseed::encode`].
    pub fn decode(bytes: &[u8; RESEED_LEN]) -> Reseed {
        let mut seed = [0u8; 64];
        seed.copy_from_slice(&bytes[8..]);
        Reseed {
            unix_nanos: u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
            seed,
        }
    }
}

/// Largest response a function may return; past it the invocation fails.
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;
/// Longest error message kept from a function; the rest is cut.
pub const MAX_ERROR_BYTES: usize = 4 * 1024;
/// Most log bytes kept per invocation (the newest); older bytes are dropped.
pub const MAX_LOG_BYTES: usize = 64 * 1024;

/// `s` cut to at most `max` bytes on a character boundary, with a note saying
/// how much was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [{} bytes cut]", &s[..end], s.len() - end)
}

/// The last `max` bytes of `s` (on a character boundary), noting what was dropped.
pub fn keep_tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[{start} earlier bytes dropped]\n{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reseed_round_trips() {
        let r = Reseed {
            unix_nanos: 1_764_000_000_123_456_789,
            seed: [7; 64],
        };
        assert_eq!(Reseed::decode(&r.encode()), r);
        assert_eq!(RESEED_OK.len(), RESEED_FAILED.len());
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate("ééééé", 3);
        assert!(cut.starts_with('é') && cut.contains("bytes cut"), "{cut}");
        let tail = keep_tail("abcdef", 2);
        assert!(tail.ends_with("\nef"), "{tail}");
        assert!(keep_tail("ééé", 3).ends_with('é'));
    }
}
