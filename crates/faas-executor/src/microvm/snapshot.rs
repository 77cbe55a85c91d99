//! Saved VM states: a cache of one run, bounded in count.

use std::path::Path;

/// Delete the least recently used states beyond `keep` (temporary files of
/// saves in progress are left alone).
pub(super) async fn prune_snapshots(dir: &Path, keep: usize) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    let mut states = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "state") {
            if let Ok(modified) = entry.metadata().await.and_then(|m| m.modified()) {
                states.push((modified, path));
            }
        }
    }
    if states.len() <= keep {
        return;
    }
    states.sort();
    for (_, path) in &states[..states.len() - keep] {
        let _ = tokio::fs::remove_file(path).await;
        // Its `/tmp` disk, if it has one, goes with it.
        let _ = tokio::fs::remove_file(super::saved_scratch(path)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn pruning_keeps_the_most_recently_used_states() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::time::SystemTime::now() - Duration::from_secs(100);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            std::fs::write(dir.path().join(format!("{name}.tmpdisk")), "").unwrap();
            let path = dir.path().join(format!("{name}.state"));
            let f = std::fs::File::create(&path).unwrap();
            f.set_modified(base + Duration::from_secs(i as u64 * 10))
                .unwrap();
        }
        std::fs::File::create(dir.path().join("e.vm-1.tmp"))
            .unwrap()
            .set_modified(base)
            .unwrap();
        prune_snapshots(dir.path(), 2).await;
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["c.state", "c.tmpdisk", "d.state", "d.tmpdisk", "e.vm-1.tmp"]
        );
    }
}
