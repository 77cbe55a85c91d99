//! The host's cgroups as the native sandbox uses them: where an instance's
//! memory cgroup lives (to tell an out-of-memory kill from any other crash),
//! its freezer (an idle instance is frozen, so nothing it left running uses
//! CPU between invocations), the limits on the parent of every instance, and
//! sweeping what a killed `runc` left behind.

use std::path::{Path, PathBuf};

/// The host's cgroup layout, as far as the memory controller goes.
#[derive(Debug, Clone)]
pub enum CgroupLayout {
    /// cgroup v1 (or hybrid): the memory controller's own hierarchy.
    V1 {
        /// Mount point of the memory hierarchy.
        memory_root: PathBuf,
    },
    /// Unified cgroup v2 hierarchy.
    V2 {
        /// Mount point of the unified hierarchy.
        root: PathBuf,
    },
    /// No memory controller found: OOM kills are reported as plain crashes.
    Unknown,
}

impl CgroupLayout {
    /// Read the layout from `/proc/self/mountinfo`.
    pub fn detect() -> CgroupLayout {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::from_mountinfo(&info)
    }

    fn from_mountinfo(info: &str) -> CgroupLayout {
        let mut v2 = None;
        for line in info.lines() {
            // Fields: ... mount_point ... - fstype source super_options
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = pre.split_whitespace().nth(4).unwrap_or_default();
            let mut post = post.split_whitespace();
            let fstype = post.next().unwrap_or_default();
            let options = post.nth(1).unwrap_or_default();
            if fstype == "cgroup" && options.split(',').any(|o| o == "memory") {
                return CgroupLayout::V1 {
                    memory_root: PathBuf::from(mount_point),
                };
            }
            if fstype == "cgroup2" && v2.is_none() {
                let root = PathBuf::from(mount_point);
                let controllers =
                    std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
                if controllers.split_whitespace().any(|c| c == "memory") {
                    v2 = Some(root);
                }
            }
        }
        v2.map_or(CgroupLayout::Unknown, |root| CgroupLayout::V2 { root })
    }

    /// Whether memory+swap can be limited.
    pub fn swap_accounting(&self) -> bool {
        match self {
            CgroupLayout::V1 { memory_root } => {
                memory_root.join("memory.memsw.limit_in_bytes").exists()
            }
            CgroupLayout::V2 { .. } => true,
            CgroupLayout::Unknown => false,
        }
    }

    /// The memory cgroup directory of `path` (`/<parent>/<id>`).
    pub fn memory_dir(&self, path: &str) -> Option<PathBuf> {
        let rel = path.trim_start_matches('/');
        match self {
            CgroupLayout::V1 { memory_root } => Some(memory_root.join(rel)),
            CgroupLayout::V2 { root } => Some(root.join(rel)),
            CgroupLayout::Unknown => None,
        }
    }

    /// Set cgroup `dir`'s memory limit to `bytes` (memory+swap too with
    /// `swap_accounting`: the same value, so nothing swaps past the limit).
    /// Fails with `EBUSY` when the cgroup already uses more.
    pub fn set_memory_limit(
        &self,
        dir: &Path,
        bytes: u64,
        swap_accounting: bool,
    ) -> std::io::Result<()> {
        let value = bytes.to_string();
        match self {
            CgroupLayout::V1 { .. } => {
                let (memory, memsw) = (
                    dir.join("memory.limit_in_bytes"),
                    dir.join("memory.memsw.limit_in_bytes"),
                );
                if !swap_accounting {
                    return std::fs::write(memory, value);
                }
                // memory+swap may never be below memory: raise it first, lower it last.
                let current: u64 = std::fs::read_to_string(&memory)?
                    .trim()
                    .parse()
                    .map_err(std::io::Error::other)?;
                if bytes > current {
                    std::fs::write(memsw, &value)?;
                    std::fs::write(memory, &value)
                } else {
                    std::fs::write(memory, &value)?;
                    std::fs::write(memsw, &value)
                }
            }
            // The swap limit (0) was set at start and stays.
            CgroupLayout::V2 { .. } => std::fs::write(dir.join("memory.max"), value),
            CgroupLayout::Unknown => Ok(()),
        }
    }

    /// How many times memory use in cgroup `dir` ran into its limit (v1
    /// `memory.failcnt`, v2 the `max` event).
    pub fn limit_hits(&self, dir: &Path) -> u64 {
        match self {
            CgroupLayout::V1 { .. } => std::fs::read_to_string(dir.join("memory.failcnt"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            CgroupLayout::V2 { .. } => read_key(&dir.join("memory.events"), "max"),
            CgroupLayout::Unknown => 0,
        }
    }

    /// How many processes the OOM killer has killed in cgroup `dir`.
    pub fn oom_kills(&self, dir: &Path) -> u64 {
        let (file, key) = match self {
            CgroupLayout::V1 { .. } => ("memory.oom_control", "oom_kill"),
            CgroupLayout::V2 { .. } => ("memory.events", "oom_kill"),
            CgroupLayout::Unknown => return 0,
        };
        read_key(&dir.join(file), key)
    }
}

/// The freeze switch of one cgroup: cgroup v1's `freezer.state` or v2's
/// `cgroup.freeze`.
#[derive(Debug, Clone)]
pub struct Freezer {
    file: PathBuf,
    v1: bool,
}

impl Freezer {
    /// The freezer of cgroup `path` (`/<parent>/<id>`), if this host has one.
    pub fn for_cgroup(path: &str) -> Option<Freezer> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::from_mountinfo(&info, path)
    }

    /// The freezer of the cgroup a process (`pid`) is in: for containers
    /// whose cgroup someone else (Docker) named.
    pub fn for_pid(pid: u32) -> Option<Freezer> {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        // v1 lines: `N:freezer:/path`; the v2 line: `0::/path`.
        let v1 = cgroups.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
            ctrl.split(',')
                .any(|c| c == "freezer")
                .then(|| path.to_string())
        });
        let v2 = cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string));
        match (v1, v2) {
            (Some(p), _) => Self::from_mountinfo(&info, &p).filter(|f| f.v1),
            (None, Some(p)) => Self::from_mountinfo(&info, &p),
            _ => None,
        }
    }

    fn from_mountinfo(info: &str, path: &str) -> Option<Freezer> {
        let rel = path.trim_start_matches('/');
        let mut v2 = None;
        for line in info.lines() {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = pre.split_whitespace().nth(4)?;
            let mut post = post.split_whitespace();
            let fstype = post.next().unwrap_or_default();
            let options = post.nth(1).unwrap_or_default();
            if fstype == "cgroup" && options.split(',').any(|o| o == "freezer") {
                return Some(Freezer {
                    file: Path::new(mount_point).join(rel).join("freezer.state"),
                    v1: true,
                });
            }
            if fstype == "cgroup2" && v2.is_none() {
                v2 = Some(Freezer {
                    file: Path::new(mount_point).join(rel).join("cgroup.freeze"),
                    v1: false,
                });
            }
        }
        v2.filter(|f| f.file.exists())
    }
}

impl crate::instance::FreezeSwitch for Freezer {
    fn freeze(&self) -> std::io::Result<()> {
        std::fs::write(&self.file, if self.v1 { "FROZEN" } else { "1" })
    }

    fn thaw(&self) -> std::io::Result<()> {
        std::fs::write(&self.file, if self.v1 { "THAWED" } else { "0" })
    }
}

/// Limits on the parent of every instance: together, instances can never take
/// the host's last memory, processes or CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentLimits {
    /// Memory (and memory+swap where accounted) of all instances together.
    pub memory_bytes: u64,
    /// Processes and threads of all instances together.
    pub pids: u64,
    /// CPU weight against the host's other work (v1 `cpu.shares`, 1024 = equal).
    pub cpu_shares: u64,
}

/// Create the parent cgroup `parent` in every hierarchy that limits one of
/// `limits` and set them. On a v1 (or hybrid) host these are the memory, pids
/// and cpu hierarchies; on a pure v2 host, the unified one where those
/// controllers are enabled.
pub fn limit_parent(parent: &str, limits: ParentLimits) -> std::io::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let rel = parent.trim_matches('/');
    for (mount_point, fstype, options) in mounts(&info) {
        let dir = mount_point.join(rel);
        let has = |c: &str| options.split(',').any(|o| o == c);
        let writes: Vec<(&str, String)> = if fstype == "cgroup" {
            let mut w = Vec::new();
            if has("memory") {
                w.push(("memory.limit_in_bytes", limits.memory_bytes.to_string()));
                if mount_point.join("memory.memsw.limit_in_bytes").exists() {
                    w.push((
                        "memory.memsw.limit_in_bytes",
                        limits.memory_bytes.to_string(),
                    ));
                }
            }
            if has("pids") {
                w.push(("pids.max", limits.pids.to_string()));
            }
            if has("cpu") {
                w.push(("cpu.shares", limits.cpu_shares.to_string()));
            }
            w
        } else {
            let controllers =
                std::fs::read_to_string(mount_point.join("cgroup.controllers")).unwrap_or_default();
            let on = |c: &str| controllers.split_whitespace().any(|x| x == c);
            let mut w = Vec::new();
            if on("memory") {
                w.push(("memory.max", limits.memory_bytes.to_string()));
                w.push(("memory.swap.max", "0".to_string()));
            }
            if on("pids") {
                w.push(("pids.max", limits.pids.to_string()));
            }
            if on("cpu") {
                // v2 weights are 1..10000 with 100 as the default.
                w.push((
                    "cpu.weight",
                    (limits.cpu_shares * 100 / 1024).max(1).to_string(),
                ));
            }
            w
        };
        if writes.is_empty() {
            continue;
        }
        std::fs::create_dir_all(&dir)?;
        // memsw must stay >= memory at every moment: raising the limits needs
        // memsw first, lowering them memory first. Writing memory, memsw, then
        // memory again gets there from either side.
        let v1_memory = fstype == "cgroup" && has("memory");
        for (file, value) in &writes {
            if let Err(e) = std::fs::write(dir.join(file), value) {
                // The v1 memory pair is settled by the last write below.
                if !(v1_memory && file.starts_with("memory.")) {
                    return Err(std::io::Error::new(e.kind(), format!("{file}: {e}")));
                }
            }
        }
        if v1_memory {
            std::fs::write(
                dir.join("memory.limit_in_bytes"),
                limits.memory_bytes.to_string(),
            )?;
        }
    }
    Ok(())
}

/// Remove every instance cgroup (`faas-*`) under `parent` in every hierarchy,
/// killing what still runs in one first. `runc delete` removes the cgroups of
/// containers it knows; a `runc run` killed while creating its container
/// leaves them behind, unknown to runc. Returns how many were removed.
pub fn sweep_children(parent: &str) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut removed = 0;
    for root in hierarchies(&info) {
        let dir = root.join(parent.trim_matches('/'));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("faas-") && entry.path().is_dir() && kill_and_remove(&entry.path())
            {
                removed += 1;
            }
        }
    }
    removed
}

/// [`sweep_children`] for the one instance `id`.
pub fn sweep_instance(parent: &str, id: &str) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for root in hierarchies(&info) {
        let dir = root.join(parent.trim_matches('/')).join(id);
        if dir.is_dir() {
            kill_and_remove(&dir);
        }
    }
}

/// SIGKILL every process of cgroup `dir` and remove it; false if it stays.
fn kill_and_remove(dir: &Path) -> bool {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            // SAFETY: plain kill(2) of a process in our own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // A killed process leaves its cgroup a moment later.
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// Remove the (empty) parent cgroup `parent` and its ancestors below the root,
/// in every mounted hierarchy. runc deletes an instance's own cgroup but creates,
/// and never removes, the parents on its path; a parent still holding instances
/// (another server sharing it) is busy and stays.
pub fn remove_parent(parent: &str) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for root in hierarchies(&info) {
        let mut dir = root.join(parent.trim_matches('/'));
        while dir.starts_with(&root) && dir != root {
            if std::fs::remove_dir(&dir).is_err() {
                break;
            }
            if !dir.pop() {
                break;
            }
        }
    }
}

/// Mount points of every cgroup (v1 and v2) hierarchy in `mountinfo`.
fn hierarchies(info: &str) -> Vec<PathBuf> {
    mounts(info).into_iter().map(|(p, _, _)| p).collect()
}

/// (mount point, fstype, super options) of every cgroup hierarchy.
fn mounts(info: &str) -> Vec<(PathBuf, String, String)> {
    info.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut post = post.split_whitespace();
            let fstype = post.next()?;
            let options = post.nth(1).unwrap_or_default();
            let mount_point = pre.split_whitespace().nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| {
                (
                    PathBuf::from(mount_point),
                    fstype.to_string(),
                    options.to_string(),
                )
            })
        })
        .collect()
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
fn read_key(file: &Path, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_memory_hierarchy() {
        let info = "35 25 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory\n";
        match CgroupLayout::from_mountinfo(info) {
            CgroupLayout::V1 { memory_root } => {
                assert_eq!(memory_root, PathBuf::from("/sys/fs/cgroup/memory"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn lists_every_hierarchy() {
        let info = "35 25 0:30 / /sys/fs/cgroup/memory rw shared:15 - cgroup cgroup rw,memory\n\
                    36 25 0:31 / /sys/fs/cgroup/pids rw shared:16 - cgroup cgroup rw,pids\n\
                    37 25 0:32 / /sys/fs/cgroup/unified rw shared:17 - cgroup2 cgroup2 rw\n\
                    38 25 0:33 / /tmp rw shared:18 - tmpfs tmpfs rw\n";
        assert_eq!(
            hierarchies(info),
            ["memory", "pids", "unified"]
                .map(|c| PathBuf::from("/sys/fs/cgroup").join(c))
                .to_vec()
        );
    }

    #[test]
    fn finds_the_v1_freezer() {
        let info = "35 25 0:30 / /sys/fs/cgroup/freezer rw shared:15 - cgroup cgroup rw,freezer\n\
                    37 25 0:32 / /sys/fs/cgroup/unified rw shared:17 - cgroup2 cgroup2 rw\n";
        let f = Freezer::from_mountinfo(info, "/faas/faas-1").unwrap();
        assert_eq!(
            f.file,
            PathBuf::from("/sys/fs/cgroup/freezer/faas/faas-1/freezer.state")
        );
        assert!(f.v1);
    }

    #[test]
    fn reads_oom_kill_counter() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        let layout = CgroupLayout::V1 {
            memory_root: PathBuf::from("/x"),
        };
        assert_eq!(layout.oom_kills(dir.path()), 3);
    }
}
