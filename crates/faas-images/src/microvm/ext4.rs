//! Disks: ext4 images of directory trees, made without a mount.

use std::fs::File;
use std::io;
use std::path::Path;
use std::process::Stdio;

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
    let output = Command::new("mke2fs")
        .args([
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
        .arg(out)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => MicrovmImageError::ToolMissing {
                tool: "mke2fs",
                package: "e2fsprogs",
            },
            _ => ImageError::io("running mke2fs", e).into(),
        })?;
    if !output.status.success() {
        return Err(MicrovmImageError::Tool {
            what: format!("mke2fs -d {}", src.display()),
            status: output.status,
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
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
