//! Where an instance's memory cgroup lives, to tell an out-of-memory kill
//! apart from any other crash.

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
    info.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mount_point = pre.split_whitespace().nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount_point))
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
