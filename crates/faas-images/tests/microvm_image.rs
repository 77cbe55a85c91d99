//! Builds the microVM guest kernel + initramfs for real (needs apt-get with
//! package lists and access to a Debian mirror) and an ext4 disk with
//! `mke2fs -d`. Cached under `FAAS_IMAGES_DIR` (default
//! `/var/cache/faas/images`) like the runtime images. Skipped loudly when a
//! tool is missing; failed instead when `CI` is set.

use std::io::Write;
use std::process::Command;

use faas_images::microvm::{make_ext4, CODE_LABEL, MODULES};
use faas_images::ImageStore;

fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("microVM image test cannot run in CI: {reason}");
    }
    let line = format!("\n******** SKIPPED: {reason} ********\n\n");
    std::io::stderr().write_all(line.as_bytes()).unwrap();
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_kernel_and_initramfs_are_built_and_cached() {
    for tool in ["apt-get", "dpkg", "dpkg-deb"] {
        if !has(tool) {
            return skip(&format!("{tool} is not installed"));
        }
    }
    let dir = std::env::var("FAAS_IMAGES_DIR").unwrap_or_else(|_| "/var/cache/faas/images".into());
    let store = ImageStore::new(dir);
    let progress = |line: &str| eprintln!("{line}");
    let kernel = store.ensure_guest_kernel(false, &progress).await.unwrap();
    let elf = std::fs::read(&kernel.vmlinux).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "vmlinux is an ELF file");
    // The PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) is what lets both VMMs boot it.
    assert!(
        elf.windows(4).any(|w| w == b"Xen\0"),
        "vmlinux has a Xen/PVH ELF note"
    );
    let cpio = std::fs::read(&kernel.initramfs).unwrap();
    assert_eq!(&cpio[..6], b"070701");
    let text = String::from_utf8_lossy(&cpio);
    for m in MODULES {
        assert!(
            text.contains(&format!("lib/modules/{m}.ko\0")),
            "{m} in initramfs"
        );
    }
    assert!(text.contains("bin/busybox\0") && text.contains("switch_root"));
    assert!(kernel.release.contains("cloud-amd64"), "{}", kernel.release);
    // Cached: a second call finds the same files without building.
    let again = store.find_guest_kernel().await.unwrap().expect("cached");
    assert_eq!(again.vmlinux, kernel.vmlinux);
}

#[tokio::test]
async fn ext4_disk_of_a_directory_has_its_label_and_files() {
    if !has("mke2fs") || !has("debugfs") {
        return skip("mke2fs/debugfs missing (apt-get install e2fsprogs)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("code");
    std::fs::create_dir_all(src.join("pkg")).unwrap();
    std::fs::write(src.join("main.py"), "def handler(e, c):\n    return e\n").unwrap();
    std::fs::write(src.join("pkg/data.txt"), "x".repeat(10_000)).unwrap();
    let disk = tmp.path().join("code.ext4");
    make_ext4(&src, &disk, CODE_LABEL).await.unwrap();
    let out = Command::new("debugfs")
        .args(["-R", "cat /pkg/data.txt"])
        .arg(&disk)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x".repeat(10_000));
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&disk)
        .output()
        .unwrap();
    let header = String::from_utf8_lossy(&out.stdout);
    assert!(
        header.contains("Filesystem volume name:   faas-code"),
        "{header}"
    );
    assert!(
        !header.contains("has_journal"),
        "no journal on read-only disks"
    );
}
