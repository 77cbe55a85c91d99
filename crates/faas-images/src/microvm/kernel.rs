//! The guest kernel: Debian's packages fetched with `apt-get download`, the
//! uncompressed `vmlinux` taken out of the bzImage, and the initramfs.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::{init_script, Cpio, MicrovmImageError, KERNEL_PACKAGE, MODULES};
use crate::error::{ImageError, IoContext};

/// Writes `vmlinux` and `initramfs.cpio` into `out` from the unpacked
/// packages in `tree`; returns the kernel release.
pub(super) fn assemble_kernel(tree: &Path, out: &Path) -> Result<String, MicrovmImageError> {
    let boot = tree.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .ctx(|| format!("listing {}", boot.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| MicrovmImageError::Kernel(format!("no vmlinuz in {}", boot.display())))?;
    let release = vmlinuz
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let bz = std::fs::read(&vmlinuz).ctx(|| format!("reading {}", vmlinuz.display()))?;
    let elf = extract_vmlinux(&bz)?;
    std::fs::write(out.join("vmlinux"), elf).ctx(|| "writing vmlinux")?;

    let modules_root = tree.join("lib/modules").join(&release);
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    cpio.char_device("dev/console", 0o600, 5, 1);
    let busybox = tree.join("bin/busybox");
    cpio.file(
        "bin/busybox",
        0o755,
        &std::fs::read(&busybox).ctx(|| format!("reading {}", busybox.display()))?,
    );
    cpio.file("init", 0o755, init_script().as_bytes());
    for name in MODULES {
        let path = find_module(&modules_root, name)?;
        let bytes = std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, &bytes);
    }
    std::fs::write(out.join("initramfs.cpio"), cpio.finish()).ctx(|| "writing initramfs.cpio")?;
    Ok(release)
}

fn find_module(root: &Path, name: &str) -> Result<PathBuf, MicrovmImageError> {
    let mut stack = vec![root.to_path_buf()];
    let file = format!("{name}.ko");
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let path = entry.ctx(|| format!("listing {}", dir.display()))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == file.as_str()) {
                return Ok(path);
            }
        }
    }
    Err(MicrovmImageError::Kernel(format!(
        "module {name} not found under {} (compressed modules are not supported)",
        root.display()
    )))
}

/// The uncompressed kernel inside a bzImage whose payload is LZ4 (Debian's
/// cloud kernel): the payload starts at `(setup_sects + 1) * 512 +
/// payload_offset` (setup header field at 0x248, its length at 0x24c) and is
/// an LZ4 *legacy* stream (magic `0x184C2102`, then `[u32 LE size][block]`
/// chunks of at most 8 MiB each), followed by the kernel's own 4-byte length.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, MicrovmImageError> {
    let bad = |what: &str| MicrovmImageError::Kernel(format!("not an LZ4 bzImage: {what}"));
    let u32_at = |off: usize| -> Result<u32, MicrovmImageError> {
        bzimage
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| bad("truncated header"))
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("no HdrS setup header"));
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let offset = (setup_sects + 1) * 512 + u32_at(0x248)? as usize;
    let len = u32_at(0x24c)? as usize;
    let payload = bzimage
        .get(offset..offset + len)
        .ok_or_else(|| bad("payload outside the file"))?;
    const LEGACY_MAGIC: u32 = 0x184C_2102;
    const LEGACY_BLOCK: usize = 8 << 20;
    if payload
        .get(..4)
        .map(|m| u32::from_le_bytes(m.try_into().expect("4 bytes")))
        != Some(LEGACY_MAGIC)
    {
        return Err(bad("payload is not LZ4 legacy"));
    }
    let mut out = Vec::with_capacity(payload.len() * 3);
    let mut pos = 4;
    let mut block = vec![0u8; LEGACY_BLOCK];
    while pos + 4 <= payload.len() {
        let size = u32::from_le_bytes(payload[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        if size == LEGACY_MAGIC as usize {
            pos += 4;
            continue;
        }
        // The trailing 4 bytes are the uncompressed length, not a chunk.
        if pos + 4 + size > payload.len() {
            break;
        }
        let n = lz4_flex::block::decompress_into(&payload[pos + 4..pos + 4 + size], &mut block)
            .map_err(|e| MicrovmImageError::Kernel(format!("LZ4 chunk at {pos}: {e}")))?;
        out.extend_from_slice(&block[..n]);
        pos += 4 + size;
    }
    if out.get(..4) != Some(b"\x7fELF") {
        return Err(bad("decompressed payload is not an ELF file"));
    }
    Ok(out)
}

pub(super) async fn apt_download(dir: &Path, packages: &[&str]) -> Result<(), MicrovmImageError> {
    let mut cmd = Command::new("apt-get");
    cmd.arg("download").args(packages).current_dir(dir);
    let what = format!(
        "apt-get download {} (run apt-get update?)",
        packages.join(" ")
    );
    run_tool(&mut cmd, ("apt-get", "apt"), what).await?;
    Ok(())
}

pub(super) fn find_deb(dir: &Path, package: &str) -> Result<PathBuf, MicrovmImageError> {
    let prefix = format!("{package}_");
    std::fs::read_dir(dir)
        .ctx(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .ok_or_else(|| {
            MicrovmImageError::Kernel(format!("apt-get download left no {package} package"))
        })
}

/// The `linux-image-<release>` package a kernel metapackage depends on.
pub(super) async fn kernel_dependency(meta: &Path) -> Result<String, MicrovmImageError> {
    let out = run("dpkg-deb", &[Path::new("-f"), meta, Path::new("Depends")]).await?;
    out.split(',')
        .map(|d| d.split_whitespace().next().unwrap_or_default())
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| {
            MicrovmImageError::Kernel(format!("{KERNEL_PACKAGE} depends on no linux-image: {out}"))
        })
}

/// `program args...` (from dpkg), its stdout.
pub(super) async fn run(
    program: &'static str,
    args: &[&Path],
) -> Result<String, MicrovmImageError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let output = run_tool(&mut cmd, (program, "dpkg"), program.to_string()).await?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Run `cmd`, the program `tool.0` of Debian package `tool.1`: a missing
/// program and a failing one are errors that say which (`what` names the
/// call); on success, its output.
pub(super) async fn run_tool(
    cmd: &mut Command,
    tool: (&'static str, &'static str),
    what: String,
) -> Result<std::process::Output, MicrovmImageError> {
    let output = cmd
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => MicrovmImageError::ToolMissing {
                tool: tool.0,
                package: tool.1,
            },
            _ => ImageError::io(format!("running {}", tool.0), e).into(),
        })?;
    if !output.status.success() {
        return Err(MicrovmImageError::Tool {
            what,
            status: output.status,
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_bzimage() {
        assert!(matches!(
            extract_vmlinux(&[0u8; 4096]),
            Err(MicrovmImageError::Kernel(_))
        ));
    }

    #[test]
    fn extracts_a_synthetic_lz4_legacy_payload() {
        let elf: Vec<u8> = b"\x7fELF"
            .iter()
            .copied()
            .chain((0..100_000u32).map(|i| (i % 251) as u8))
            .collect();
        let block = lz4_flex::block::compress(&elf);
        let mut payload = 0x184C_2102u32.to_le_bytes().to_vec();
        payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        let mut bz = vec![0u8; 5 * 512];
        bz[0x1f1] = 4;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend_from_slice(&payload);
        assert_eq!(extract_vmlinux(&bz).unwrap(), elf);
    }
}
