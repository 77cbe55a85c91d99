//! Disks: ext4 images of directory trees, made without a mount.

use std::fs::File;
use std::path::Path;

use tokio::process::Command;

use super::MicrovmImageError;
use crate::builder;
use crate::error::{ImageError, IoContext};

/// Makes a read-only-use ext4 image of `src` at `out` labelled `label`
/// (`mke2fs -d`: no loop device, no mount, no root needed beyond reading `src`).
/// No journal: nothing ever writes to these disks.
pub async fn make_ext4(src: &Path, out: &Path, label: &str) -> Result<(), MicrovmImageError> {
    let src2 = src.to_path_buf();
    let (bytes, files) = tokio::task::spawn_blocking(move || count_tree(&src2))
        .await
        .map_err(ImageError::from)??;
    // ext4 metadata, directory blocks and 4 KiB rounding of small files.
    let size_kib = (bytes / 1024) * 5 / 4 + files * 4 + 16 * 1024;
    let inodes = files * 5 / 4 + 256;
    let file = File::create(out).ctx(|| format!("creating {}", out.display()))?;
    file.set_len(size_kib * 1024)
        .ctx(|| format!("sizing {}", out.display()))?;
    drop(file);
    let mut cmd = Command::new("mke2fs");
    cmd.args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-O",
        "^has_journal",
        "-m",
        "0",
        "-b",
        "4096",
    ])
    .arg("-N")
    .arg(inodes.to_string())
    .arg("-L")
    .arg(label)
    .arg("-E")
    .arg("root_owner=0:0")
    .arg("-d")
    .arg(src)
    .arg(out);
    super::kernel::run_tool(
        &mut cmd,
        ("mke2fs", "e2fsprogs"),
        format!("mke2fs -d {}", src.display()),
    )
    .await?;
    Ok(())
}

/// Apparent bytes and entry count under `root` (symlinks not followed).
fn count_tree(root: &Path) -> Result<(u64, u64), ImageError> {
    let bytes = builder::tree_size(root)?;
    let mut files = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            files += 1;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, files))
}
