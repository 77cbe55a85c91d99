//! The building steps: mmdebstrap, unpacking, and the FaaS layout on top.

use std::collections::{HashSet, VecDeque};
use std::env;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use crate::error::{ImageError, IoContext};
use crate::mirror::Mirrors;
use crate::recipe::{BaseRecipe, BOOTSTRAPS};
use crate::ImageKind;

/// How many trailing output lines of a failed command are kept for the error.
const TAIL_LINES: usize = 20;

/// Where the agent is installed inside the image.
pub(crate) const AGENT_PATH: &str = "opt/faas/bin/faas-guest-agent";
/// Where the bootstraps are installed inside the image.
pub(crate) const BOOTSTRAP_DIR: &str = "opt/faas/bootstrap";

/// Directories created (or re-moded) on top of the base, with their modes.
const LAYOUT_DIRS: [(&str, u32); 14] = [
    ("opt/faas", 0o755),
    ("opt/faas/bin", 0o755),
    (BOOTSTRAP_DIR, 0o755),
    ("opt/faas/deps", 0o755),
    // Mount points of the build sandbox (faas_common::contract::BUILD_*).
    ("opt/faas/build", 0o755),
    // runc gives a tmpfs the mode of the directory it covers.
    ("opt/faas/build/out", 0o1777),
    ("opt/faas/build/layer", 0o755),
    ("var/task", 0o755),
    ("run/faas", 0o755),
    ("tmp", 0o1777),
    ("proc", 0o755),
    ("dev", 0o755),
    ("sys", 0o755),
    ("etc", 0o755),
];

/// Replaces the build host's `/etc/hostname`, which mmdebstrap copies in.
const HOSTNAME: &str = "faas\n";
/// `/etc/hosts`: localhost only. Instances with an egress allow-list get
/// their pinned names in a file of their own mounted over it.
const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost\n";
/// Replaces the build host's `/etc/resolv.conf`, which mmdebstrap copies in.
const RESOLV_CONF: &str = "# Provided by the sandbox at run time when networking is enabled.\n";

/// Progress callback type used throughout the crate.
pub(crate) type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Finds `mmdebstrap` on `PATH`.
pub(crate) fn find_mmdebstrap() -> Result<PathBuf, ImageError> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .map(|dir| dir.join("mmdebstrap"))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or(ImageError::MmdebstrapMissing)
}

/// Fails unless the process runs as root.
pub(crate) fn require_root(lang: ImageKind) -> Result<(), ImageError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        Ok(())
    } else {
        Err(ImageError::NotRoot { lang, euid })
    }
}

/// Runs mmdebstrap for `recipe`, writing the tarball to `out` (which must end in `.tar`).
pub(crate) async fn run_mmdebstrap(
    lang: ImageKind,
    mmdebstrap: &Path,
    recipe: &BaseRecipe,
    mirrors: &Mirrors,
    out: &Path,
    progress: Progress<'_>,
) -> Result<(), ImageError> {
    let mut cmd = Command::new(mmdebstrap);
    cmd.arg(format!("--variant={}", recipe.variant))
        .arg("--mode=root")
        .arg("--format=tar")
        .arg("--aptopt=Acquire::Retries \"3\"");
    for hook in &recipe.hook_dirs {
        cmd.arg(format!("--hook-dir={hook}"));
    }
    if !recipe.packages.is_empty() {
        cmd.arg(format!("--include={}", recipe.packages.join(",")));
    }
    for opt in &recipe.dpkg_options {
        cmd.arg(format!("--dpkgopt={opt}"));
    }
    cmd.arg(&recipe.suite)
        .arg(out)
        .args(mirrors.source_lines(&recipe.suite))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::info!(?cmd, "running mmdebstrap");

    let mut child = cmd
        .spawn()
        .ctx(|| format!("cannot run {}", mmdebstrap.display()))?;
    let tail = Mutex::new(VecDeque::with_capacity(TAIL_LINES));
    let forward = |line: String| {
        tracing::debug!(%lang, "mmdebstrap: {line}");
        if ["I: ", "W: ", "E: "].iter().any(|p| line.starts_with(p)) {
            progress(&format!("{lang}: {line}"));
        }
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (out_read, err_read) =
        tokio::join!(read_lines(stdout, &forward), read_lines(stderr, &forward));
    let status = child.wait().await.ctx(|| "waiting for mmdebstrap")?;
    out_read.ctx(|| "reading mmdebstrap output")?;
    err_read.ctx(|| "reading mmdebstrap output")?;
    if status.success() {
        return Ok(());
    }
    let lines: Vec<String> = tail.into_inner().unwrap_or_else(|e| e.into_inner()).into();
    Err(ImageError::MmdebstrapFailed {
        lang,
        status,
        stderr_tail: lines.join("\n"),
    })
}

async fn read_lines(
    stream: Option<impl AsyncRead + Unpin>,
    forward: &impl Fn(String),
) -> io::Result<()> {
    let Some(stream) = stream else {
        return Ok(());
    };
    let mut lines = BufReader::new(stream).lines();
    while let Some(line) = lines.next_line().await? {
        forward(line);
    }
    Ok(())
}

/// Unpacks the base tarball into `rootfs` with the system `tar`, keeping
/// ownership and modes and skipping the device nodes under `/dev` (the sandbox
/// provides its own `/dev`).
pub(crate) async fn extract_base(
    lang: ImageKind,
    tarball: &Path,
    rootfs: &Path,
) -> Result<(), ImageError> {
    let output = Command::new("tar")
        .arg("--extract")
        .arg("--file")
        .arg(tarball)
        .arg("--directory")
        .arg(rootfs)
        .args([
            "--numeric-owner",
            "--same-owner",
            "--preserve-permissions",
            "--exclude=./dev/*",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ctx(|| format!("cannot run tar to unpack {}", tarball.display()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(ImageError::ExtractFailed {
        lang,
        status: output.status,
        stderr_tail: tail_of(&output.stderr),
    })
}

fn tail_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// Writes the FaaS layout on top of an unpacked base: agent, bootstraps,
/// mount points, and host-independent `/etc/hostname`, `/etc/hosts` and
/// `/etc/resolv.conf`.
pub(crate) fn install_layout(rootfs: &Path, agent: &[u8]) -> Result<(), ImageError> {
    set_mode(rootfs, 0o755)?;
    for (dir, mode) in LAYOUT_DIRS {
        let path = rootfs.join(dir);
        fs::create_dir_all(&path).ctx(|| format!("creating {}", path.display()))?;
        set_mode(&path, mode)?;
    }
    write_file(&rootfs.join(AGENT_PATH), agent, 0o755)?;
    for (name, contents) in BOOTSTRAPS {
        write_file(
            &rootfs.join(BOOTSTRAP_DIR).join(name),
            contents.as_bytes(),
            0o644,
        )?;
    }
    write_file(&rootfs.join("etc/hostname"), HOSTNAME.as_bytes(), 0o644)?;
    write_file(&rootfs.join("etc/hosts"), HOSTS.as_bytes(), 0o644)?;
    write_file(
        &rootfs.join("etc/resolv.conf"),
        RESOLV_CONF.as_bytes(),
        0o644,
    )?;
    Ok(())
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("setting mode {mode:o} on {}", path.display()))
}

/// Creates `path` afresh (never writing through an existing symlink) with `mode`.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), ImageError> {
    match fs::symlink_metadata(path) {
        Ok(_) => fs::remove_file(path).ctx(|| format!("removing {}", path.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ImageError::io(format!("inspecting {}", path.display()), e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .ctx(|| format!("creating {}", path.display()))?;
    file.write_all(contents)
        .ctx(|| format!("writing {}", path.display()))?;
    // The umask may have masked bits off at creation.
    set_mode(path, mode)
}

/// Apparent size in bytes of everything under `root` (hard links counted once,
/// symlinks not followed).
pub(crate) fn tree_size(root: &Path) -> Result<u64, ImageError> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))?;
        for entry in entries {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let path = entry.path();
            let meta =
                fs::symlink_metadata(&path).ctx(|| format!("inspecting {}", path.display()))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino())) {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Whole mebibytes, for progress messages.
pub(crate) fn mib(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}
