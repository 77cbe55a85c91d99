//! Hardware evidence through Linux configfs-tsm (kernel >= 6.7), for TDX and SEV-SNP guests.
//!
//! One request is one directory under `/sys/kernel/config/tsm/report`: write the report
//! data to `inblob`, read the quote from `outblob`, and compare `generation` before and
//! after so a concurrent writer to the same directory cannot hand us a quote for someone
//! else's data. The directory is removed on every path (see [`ReportEntry`]).

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use super::{AttestError, Attester, RawEvidence};
use crate::evidence::EvidenceKind;

/// Where configfs-tsm report requests live.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";

/// Attempts before a generation conflict is reported as an error.
const MAX_ATTEMPTS: u32 = 3;

/// VCEK GUID `63da758d-e664-4564-adc5-f4b93be8accd` as stored in an SNP certificate
/// table, in string byte order and in the little-endian (EFI) layout.
const VCEK_GUIDS: [[u8; 16]; 2] = [
    [
        0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac,
        0xcd,
    ],
    [
        0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac,
        0xcd,
    ],
];

/// The file operations a report request needs. The kernel implementation is [`KernelFs`];
/// unit tests substitute a fake tree that behaves like the kernel's.
trait ReportFs: Send + Sync {
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
}

/// configfs itself: attributes exist as soon as the directory does, and are written in
/// place (never created or truncated).
struct KernelFs;

impl ReportFs for KernelFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all(data)
    }
}

/// One report directory; removed (`rmdir`) when dropped, whatever happened in between.
struct ReportEntry<'a> {
    fs: &'a dyn ReportFs,
    path: PathBuf,
}

impl<'a> ReportEntry<'a> {
    fn create(fs: &'a dyn ReportFs, root: &Path) -> Result<Self, AttestError> {
        let mut suffix = [0u8; 8];
        getrandom::getrandom(&mut suffix).map_err(|e| AttestError::Random(e.to_string()))?;
        let path = root.join(format!(
            "faas-{}-{}",
            std::process::id(),
            hex::encode(suffix)
        ));
        fs.create_dir(&path).map_err(|source| AttestError::Io {
            op: "mkdir",
            path: path.clone(),
            source,
        })?;
        Ok(Self { fs, path })
    }

    fn read(&self, attribute: &str) -> Result<Vec<u8>, AttestError> {
        let path = self.path.join(attribute);
        self.fs.read(&path).map_err(|source| AttestError::Io {
            op: "read",
            path,
            source,
        })
    }

    fn write(&self, attribute: &str, data: &[u8]) -> Result<(), AttestError> {
        let path = self.path.join(attribute);
        self.fs
            .write(&path, data)
            .map_err(|source| AttestError::Io {
                op: "write",
                path,
                source,
            })
    }

    fn read_text(&self, attribute: &str) -> Result<String, AttestError> {
        let bytes = self.read(attribute)?;
        String::from_utf8(bytes)
            .map(|s| s.trim().to_owned())
            .map_err(|_| AttestError::Malformed {
                path: self.path.join(attribute),
                detail: "not UTF-8".into(),
            })
    }

    fn generation(&self) -> Result<u64, AttestError> {
        let text = self.read_text("generation")?;
        text.parse().map_err(|_| AttestError::Malformed {
            path: self.path.join("generation"),
            detail: format!("generation {text:?} is not a number"),
        })
    }

    /// `auxblob` (SEV-SNP certificate table); absent or empty when the host supplies none.
    fn read_aux(&self) -> Result<Option<Vec<u8>>, AttestError> {
        let path = self.path.join("auxblob");
        match self.fs.read(&path) {
            Ok(bytes) if bytes.is_empty() => Ok(None),
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AttestError::Io {
                op: "read",
                path,
                source,
            }),
        }
    }
}

impl Drop for ReportEntry<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.fs.remove_dir(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "rmdir of tsm report entry failed");
        }
    }
}

/// Produces TDX quotes or SEV-SNP reports through configfs-tsm.
pub struct TsmAttester {
    root: PathBuf,
    provider: String,
    kind: EvidenceKind,
    fs: Box<dyn ReportFs>,
}

impl TsmAttester {
    /// Opens [`TSM_REPORT_ROOT`] and learns the provider (`tdx_guest` or `sev_guest`).
    pub fn open() -> Result<Self, AttestError> {
        Self::open_in(TSM_REPORT_ROOT)
    }

    /// As [`Self::open`], with another configfs-tsm report directory.
    pub fn open_in(root: impl Into<PathBuf>) -> Result<Self, AttestError> {
        Self::open_with(root.into(), Box::new(KernelFs))
    }

    fn open_with(root: PathBuf, fs: Box<dyn ReportFs>) -> Result<Self, AttestError> {
        let provider = {
            let entry = ReportEntry::create(fs.as_ref(), &root)?;
            entry.read_text("provider")?
        };
        let kind = match provider.as_str() {
            "tdx_guest" => EvidenceKind::Tdx,
            "sev_guest" => EvidenceKind::SevSnp,
            _ => return Err(AttestError::UnsupportedProvider(provider)),
        };
        Ok(Self {
            root,
            provider,
            kind,
            fs,
        })
    }

    /// The provider the kernel reported (`tdx_guest` or `sev_guest`).
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The configfs-tsm report directory in use.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl std::fmt::Debug for TsmAttester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsmAttester")
            .field("root", &self.root)
            .field("provider", &self.provider)
            .finish()
    }
}

impl Attester for TsmAttester {
    fn kind(&self) -> EvidenceKind {
        self.kind
    }

    fn attest(&self, report_data: &[u8; 64]) -> Result<RawEvidence, AttestError> {
        for attempt in 1..=MAX_ATTEMPTS {
            let entry = ReportEntry::create(self.fs.as_ref(), &self.root)?;
            let before = entry.generation()?;
            entry.write("inblob", report_data)?;
            let raw = entry.read("outblob")?;
            let aux = match self.kind {
                EvidenceKind::SevSnp => entry.read_aux()?,
                _ => None,
            };
            let after = entry.generation()?;
            if after != before + 1 {
                tracing::warn!(
                    attempt,
                    before,
                    after,
                    "tsm report rewritten concurrently; retrying"
                );
                continue;
            }
            if raw.is_empty() {
                return Err(AttestError::Malformed {
                    path: entry.path.join("outblob"),
                    detail: "empty outblob".into(),
                });
            }
            return Ok(RawEvidence {
                kind: self.kind,
                raw,
                certs: aux.as_deref().and_then(vcek_from_cert_table),
            });
        }
        Err(AttestError::GenerationConflict(MAX_ATTEMPTS))
    }
}

/// The VCEK from an SNP certificate table: 24-byte entries (GUID, offset, length, both
/// little-endian u32 relative to the table), ended by an all-zero GUID.
fn vcek_from_cert_table(table: &[u8]) -> Option<Vec<u8>> {
    for entry in table.chunks_exact(24) {
        let guid: [u8; 16] = entry[..16].try_into().ok()?;
        if guid == [0u8; 16] {
            break;
        }
        if VCEK_GUIDS.contains(&guid) {
            let offset = u32::from_le_bytes(entry[16..20].try_into().ok()?) as usize;
            let length = u32::from_le_bytes(entry[20..24].try_into().ok()?) as usize;
            return table
                .get(offset..offset.checked_add(length)?)
                .map(<[u8]>::to_vec);
        }
    }
    None
}

/// The hardware attester this machine offers, if any: `Some` when configfs-tsm is mounted
/// and reports a TDX or SEV-SNP provider. `None` means no hardware evidence here; whether a
/// [`super::SimulatedAttester`] may stand in is the caller's decision.
pub fn detect() -> Option<TsmAttester> {
    detect_in(TSM_REPORT_ROOT)
}

/// As [`detect`], with another configfs-tsm report directory.
pub fn detect_in(root: impl Into<PathBuf>) -> Option<TsmAttester> {
    let root = root.into();
    if !root.is_dir() {
        return None;
    }
    match TsmAttester::open_in(&root) {
        Ok(attester) => Some(attester),
        Err(e) => {
            tracing::info!(root = %root.display(), error = %e, "configfs-tsm present but unusable");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    /// A directory tree that behaves like configfs-tsm: a new entry comes with `provider`
    /// and `generation`, writing `inblob` bumps the generation, `outblob` is derived from
    /// `inblob`, and `rmdir` works on a populated entry.
    struct FakeKernel {
        provider: &'static str,
        /// How many `outblob` reads see another writer bump the generation.
        conflicts: AtomicU32,
        fail_outblob: bool,
        auxblob: Option<Vec<u8>>,
        created: Mutex<Vec<PathBuf>>,
        removed: Mutex<Vec<PathBuf>>,
    }

    impl FakeKernel {
        fn new(provider: &'static str) -> Self {
            Self {
                provider,
                conflicts: AtomicU32::new(0),
                fail_outblob: false,
                auxblob: None,
                created: Mutex::new(Vec::new()),
                removed: Mutex::new(Vec::new()),
            }
        }

        fn bump(dir: &Path) -> io::Result<()> {
            let gen: u64 = std::fs::read_to_string(dir.join("generation"))?
                .trim()
                .parse()
                .map_err(io::Error::other)?;
            std::fs::write(dir.join("generation"), format!("{}\n", gen + 1))
        }
    }

    impl ReportFs for std::sync::Arc<FakeKernel> {
        fn create_dir(&self, path: &Path) -> io::Result<()> {
            std::fs::create_dir(path)?;
            std::fs::write(path.join("provider"), format!("{}\n", self.provider))?;
            std::fs::write(path.join("generation"), "0\n")?;
            self.created.lock().unwrap().push(path.to_owned());
            Ok(())
        }

        fn remove_dir(&self, path: &Path) -> io::Result<()> {
            std::fs::remove_dir_all(path)?;
            self.removed.lock().unwrap().push(path.to_owned());
            Ok(())
        }

        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            let dir = path.parent().unwrap();
            match path.file_name().unwrap().to_str().unwrap() {
                "outblob" => {
                    if self.fail_outblob {
                        return Err(io::Error::other("quote generation service unreachable"));
                    }
                    let inblob = std::fs::read(dir.join("inblob"))?;
                    if self
                        .conflicts
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        FakeKernel::bump(dir)?;
                    }
                    Ok([b"QUOTE:".as_slice(), &inblob].concat())
                }
                "auxblob" => self
                    .auxblob
                    .clone()
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound)),
                _ => std::fs::read(path),
            }
        }

        fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            std::fs::write(path, data)?;
            FakeKernel::bump(path.parent().unwrap())
        }
    }

    fn attester(fake: &std::sync::Arc<FakeKernel>, root: &Path) -> TsmAttester {
        TsmAttester::open_with(root.to_owned(), Box::new(fake.clone())).unwrap()
    }

    fn entries(root: &Path) -> usize {
        std::fs::read_dir(root).unwrap().count()
    }

    #[test]
    fn tdx_flow_writes_inblob_reads_outblob_and_cleans_up() {
        let root = tempfile::tempdir().unwrap();
        let fake = std::sync::Arc::new(FakeKernel::new("tdx_guest"));
        let a = attester(&fake, root.path());
        assert_eq!(a.kind(), EvidenceKind::Tdx);
        assert_eq!(a.provider(), "tdx_guest");
        let data = [7u8; 64];
        let out = a.attest(&data).unwrap();
        assert_eq!(out.kind, EvidenceKind::Tdx);
        assert_eq!(out.raw, [b"QUOTE:".as_slice(), &data].concat());
        assert_eq!(out.certs, None);
        assert_eq!(entries(root.path()), 0);
        // One probe entry at open, one for the report; every one removed.
        assert_eq!(fake.created.lock().unwrap().len(), 2);
        assert_eq!(*fake.created.lock().unwrap(), *fake.removed.lock().unwrap());
    }

    #[test]
    fn concurrent_writer_is_detected_and_retried() {
        let root = tempfile::tempdir().unwrap();
        let fake = std::sync::Arc::new(FakeKernel::new("tdx_guest"));
        fake.conflicts.store(1, Ordering::SeqCst);
        let a = attester(&fake, root.path());
        let out = a.attest(&[1u8; 64]).unwrap();
        assert_eq!(out.raw, [b"QUOTE:".as_slice(), &[1u8; 64]].concat());
        assert_eq!(fake.created.lock().unwrap().len(), 3);
        assert_eq!(entries(root.path()), 0);
    }

    #[test]
    fn persistent_conflict_gives_up_and_cleans_up() {
        let root = tempfile::tempdir().unwrap();
        let fake = std::sync::Arc::new(FakeKernel::new("tdx_guest"));
        fake.conflicts.store(u32::MAX, Ordering::SeqCst);
        let a = attester(&fake, root.path());
        let err = a.attest(&[1u8; 64]).unwrap_err();
        assert!(
            matches!(err, AttestError::GenerationConflict(MAX_ATTEMPTS)),
            "{err}"
        );
        assert_eq!(entries(root.path()), 0);
        assert_eq!(
            fake.removed.lock().unwrap().len(),
            1 + MAX_ATTEMPTS as usize
        );
    }

    #[test]
    fn failed_outblob_read_still_removes_the_entry() {
        let root = tempfile::tempdir().unwrap();
        let mut fake = FakeKernel::new("tdx_guest");
        fake.fail_outblob = true;
        let fake = std::sync::Arc::new(fake);
        let a = attester(&fake, root.path());
        let err = a.attest(&[1u8; 64]).unwrap_err();
        assert!(
            matches!(&err, AttestError::Io { op: "read", path, .. } if path.ends_with("outblob")),
            "{err}"
        );
        assert_eq!(entries(root.path()), 0);
        assert_eq!(*fake.created.lock().unwrap(), *fake.removed.lock().unwrap());
    }

    #[test]
    fn sev_reads_vcek_from_auxblob() {
        let vcek = b"vcek-der-bytes".to_vec();
        let mut table = Vec::new();
        table.extend_from_slice(&VCEK_GUIDS[0]);
        table.extend_from_slice(&48u32.to_le_bytes());
        table.extend_from_slice(&(vcek.len() as u32).to_le_bytes());
        table.extend_from_slice(&[0u8; 24]);
        table.extend_from_slice(&vcek);

        let root = tempfile::tempdir().unwrap();
        let mut fake = FakeKernel::new("sev_guest");
        fake.auxblob = Some(table);
        let fake = std::sync::Arc::new(fake);
        let a = attester(&fake, root.path());
        assert_eq!(a.kind(), EvidenceKind::SevSnp);
        let out = a.attest(&[2u8; 64]).unwrap();
        assert_eq!(out.kind, EvidenceKind::SevSnp);
        assert_eq!(out.certs, Some(vcek));
        assert_eq!(entries(root.path()), 0);
    }

    #[test]
    fn cert_table_without_vcek_or_out_of_bounds_gives_none() {
        let mut table = vec![0xAAu8; 16];
        table.extend_from_slice(&48u32.to_le_bytes());
        table.extend_from_slice(&4u32.to_le_bytes());
        table.extend_from_slice(&[0u8; 24]);
        assert_eq!(vcek_from_cert_table(&table), None);
        let mut table = VCEK_GUIDS[1].to_vec();
        table.extend_from_slice(&1000u32.to_le_bytes());
        table.extend_from_slice(&4u32.to_le_bytes());
        assert_eq!(vcek_from_cert_table(&table), None);
    }

    #[test]
    fn unknown_provider_is_refused_and_cleaned_up() {
        let root = tempfile::tempdir().unwrap();
        let fake = std::sync::Arc::new(FakeKernel::new("arm_cca_guest"));
        let err =
            TsmAttester::open_with(root.path().to_owned(), Box::new(fake.clone())).unwrap_err();
        assert!(matches!(&err, AttestError::UnsupportedProvider(p) if p == "arm_cca_guest"));
        assert_eq!(entries(root.path()), 0);
    }

    #[test]
    fn detect_on_a_plain_directory_finds_nothing_and_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        assert!(detect_in(root.path()).is_none());
        assert_eq!(entries(root.path()), 0);
        assert!(detect_in(root.path().join("missing")).is_none());
    }
}
