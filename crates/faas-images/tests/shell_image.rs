//! Builds the shell image for real with mmdebstrap (needs root and network
//! access to a Debian mirror; skipped loudly otherwise).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use faas_common::Language;
use faas_images::ImageStore;

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("not running as root (euid {euid})"));
    }
    let found = Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return Some("mmdebstrap is not installed (apt-get install mmdebstrap)".to_string());
    }
    None
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn count(log: &Mutex<Vec<String>>, needle: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_image_is_built_cached_and_rebuilt_on_agent_change() {
    if let Some(reason) = skip_reason() {
        // Written to the stderr handle directly: libtest captures `eprintln!`.
        let line = format!("\n******** SKIPPED: {reason} ********\n\n");
        std::io::stderr().write_all(line.as_bytes()).unwrap();
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let agent = tmp.path().join("agent-v1");
    fs::copy("/bin/true", &agent).unwrap();
    let store = ImageStore::new(tmp.path().join("images"));
    let log = Mutex::new(Vec::<String>::new());
    let progress = |line: &str| {
        eprintln!("{line}");
        log.lock().unwrap().push(line.to_string());
    };

    assert!(store.find(Language::Shell, &agent).await.unwrap().is_none());

    // First build: mmdebstrap runs.
    let first = store
        .ensure(Language::Shell, &agent, false, &progress)
        .await
        .unwrap();
    let rootfs = &first.rootfs;
    assert_eq!(first.language, Language::Shell);
    assert_eq!(first.hash.len(), 16);
    assert!(first.packages.is_empty());
    assert_eq!(
        rootfs,
        &store
            .dir()
            .join(format!("shell-{}", first.hash))
            .join("rootfs")
    );
    assert!(rootfs.join("bin/sh").exists());
    let installed_agent = rootfs.join("opt/faas/bin/faas-guest-agent");
    assert_eq!(
        fs::read(&installed_agent).unwrap(),
        fs::read("/bin/true").unwrap()
    );
    assert_eq!(mode(&installed_agent), 0o755);
    for bootstrap in ["python.py", "node.js"] {
        let path = rootfs.join("opt/faas/bootstrap").join(bootstrap);
        assert!(fs::metadata(&path).unwrap().len() > 0, "{bootstrap} empty");
        assert_eq!(mode(&path), 0o644);
    }
    for dir in [
        "var/task",
        "opt/faas/deps",
        "run/faas",
        "proc",
        "dev",
        "sys",
    ] {
        assert!(rootfs.join(dir).is_dir(), "{dir} missing");
        assert_eq!(
            mode(&rootfs.join(dir)) & 0o005,
            0o005,
            "{dir} not world-readable"
        );
    }
    assert_eq!(mode(&rootfs.join("tmp")), 0o1777);
    assert_eq!(mode(rootfs.parent().unwrap()), 0o755);
    assert!(rootfs.parent().unwrap().join("image.json").is_file());
    assert_eq!(fs::read_dir(rootfs.join("dev")).unwrap().count(), 0);
    assert_eq!(
        count(&log, "building base root filesystem with mmdebstrap"),
        1
    );
    assert!(
        count(&log, "shell: I: ") > 0,
        "mmdebstrap lines not forwarded"
    );
    assert_eq!(count(&log, "image ready at"), 1);

    // The image actually runs.
    let out = Command::new("chroot")
        .arg(rootfs)
        .args(["/bin/sh", "-c", "echo hello from $(basename $0)"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from sh\n");

    // Second call: a cache hit, no mmdebstrap, no unpacking.
    log.lock().unwrap().clear();
    let started = Instant::now();
    let again = store
        .ensure(Language::Shell, &agent, false, &progress)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(again.rootfs, first.rootfs);
    assert_eq!(again.hash, first.hash);
    assert_eq!(count(&log, "image cached at"), 1);
    assert_eq!(count(&log, "mmdebstrap"), 0);
    assert_eq!(count(&log, "unpacking"), 0);
    let found = store.find(Language::Shell, &agent).await.unwrap().unwrap();
    assert_eq!(found.rootfs, first.rootfs);

    // A new agent binary: new image directory, same base tarball.
    let agent2 = tmp.path().join("agent-v2");
    fs::copy("/bin/false", &agent2).unwrap();
    log.lock().unwrap().clear();
    let second = store
        .ensure(Language::Shell, &agent2, false, &progress)
        .await
        .unwrap();
    assert_ne!(second.hash, first.hash);
    assert_ne!(second.rootfs, first.rootfs);
    assert!(
        first.rootfs.join("bin/sh").exists(),
        "old image was deleted"
    );
    assert_eq!(
        fs::read(second.rootfs.join("opt/faas/bin/faas-guest-agent")).unwrap(),
        fs::read("/bin/false").unwrap()
    );
    assert_eq!(count(&log, "reusing cached base"), 1);
    assert_eq!(count(&log, "mmdebstrap"), 0);
    let bases: Vec<_> = fs::read_dir(store.dir().join("base"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(bases.len(), 1, "{bases:?}");
    assert!(bases[0].starts_with("shell-") && bases[0].ends_with(".tar"));

    // Two concurrent requests for a new image: both miss the cache, one builds
    // under the lock, the other waits for it and then finds the image cached.
    let agent3 = tmp.path().join("agent-v3");
    fs::write(&agent3, b"#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&agent3, fs::Permissions::from_mode(0o755)).unwrap();
    log.lock().unwrap().clear();
    let (a, b) = tokio::join!(
        store.ensure(Language::Shell, &agent3, false, &progress),
        store.ensure(Language::Shell, &agent3, false, &progress),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.rootfs, b.rootfs);
    assert_eq!(count(&log, "unpacking"), 1);
    assert_eq!(count(&log, "image cached at"), 1);

    // `force` runs mmdebstrap again and moves the old image directory aside.
    log.lock().unwrap().clear();
    let forced = store
        .ensure(Language::Shell, &agent, true, &progress)
        .await
        .unwrap();
    assert_eq!(forced.rootfs, first.rootfs);
    assert!(forced.rootfs.join("bin/sh").exists());
    assert_eq!(
        count(&log, "building base root filesystem with mmdebstrap"),
        1
    );
    assert_eq!(count(&log, "image cached at"), 0);
    let replaced: Vec<_> = fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".replaced-shell-")
        })
        .collect();
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert!(replaced[0].join("rootfs/bin/sh").exists());

    // No staging directories are left behind.
    let leftovers: Vec<_> = fs::read_dir(store.dir())
        .unwrap()
        .chain(fs::read_dir(store.dir().join("base")).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".build-") || n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
