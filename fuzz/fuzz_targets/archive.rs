//! Archive decoding: whatever the bytes, a decoded tree only names paths
//! inside itself, its links resolve inside it, and the limits hold.
#![no_main]

use faas_archive::{CodeTree, Entry, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 256,
        ratio_floor: 1 << 20,
        ..Limits::default()
    };
    let Some(Ok(tree)) = CodeTree::decode_archive(data, limits) else {
        return;
    };
    assert!(tree.total_bytes() <= limits.max_bytes);
    assert!(tree.entries().count() <= limits.max_entries);
    for (path, entry) in tree.entries() {
        assert!(!path.starts_with('/'), "absolute path {path:?}");
        assert!(
            path.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
            "unclean path {path:?}"
        );
        if let Entry::Symlink(target) = entry {
            assert!(!target.starts_with('/'), "absolute link {path:?} -> {target:?}");
            // Resolved lexically from the link's directory, it never climbs out.
            let mut depth = path.matches('/').count() as i64;
            for c in target.split('/') {
                match c {
                    "" | "." => {}
                    ".." => depth -= 1,
                    _ => depth += 1,
                }
                assert!(depth >= 0, "link {path:?} -> {target:?} leaves the tree");
            }
        }
    }
    // Looking files up through links terminates.
    for (path, _) in tree.entries() {
        let _ = tree.file(path);
    }
});
