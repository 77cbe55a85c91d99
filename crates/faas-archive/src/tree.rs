//! Decoding and validating an upload in memory.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::ArchiveError;

/// Bounds on what one upload may become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of file contents after decompression.
    pub max_bytes: u64,
    /// Most entries of every kind: files, links and directories.
    pub max_entries: usize,
    /// Most unpacked bytes per packed byte, past [`Limits::ratio_floor`].
    pub max_ratio: u64,
    /// Unpacked bytes any archive may have, whatever its ratio.
    pub ratio_floor: u64,
    /// Longest path, in bytes.
    pub max_path_len: usize,
    /// Most components in a path.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 256 * 1024 * 1024,
            max_entries: 10_000,
            max_ratio: 100,
            ratio_floor: 16 * 1024 * 1024,
            max_path_len: 1024,
            max_depth: 64,
        }
    }
}

/// Longest link target, in bytes.
const MAX_LINK_TARGET: usize = 1024;
/// Lookups through links [`CodeTree::file`] follows before giving up.
const MAX_LINK_HOPS: usize = 16;

/// One entry of a code tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file.
    File {
        /// Contents.
        data: Vec<u8>,
        /// Whether any execute bit was set.
        executable: bool,
    },
    /// A symbolic link whose target stays inside the tree.
    Symlink(String),
}

/// A validated code tree.
///
/// Invariants, established by every constructor: paths are relative, made of
/// normal components only, joined by `/`; no entry lies inside a file or a
/// link; a link's target, resolved from the link's directory, names an entry or
/// a directory of the tree and passes only through directories of the tree (so
/// resolving it on disk gives the same answer as resolving it here).
#[derive(Debug, Default, Clone)]
pub struct CodeTree {
    pub(crate) entries: BTreeMap<String, Entry>,
    /// Every directory: explicit ones and the parents of every entry.
    pub(crate) dirs: BTreeSet<String>,
    total: u64,
}

impl CodeTree {
    /// Decode an archive (zip or tar.gz, told apart by their magic bytes);
    /// anything else is `None`, for the caller to treat as a single file.
    pub fn decode_archive(bytes: &[u8], limits: Limits) -> Option<Result<CodeTree, ArchiveError>> {
        if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            Some(Builder::new(limits, bytes.len()).zip(bytes))
        } else if bytes.starts_with(&[0x1f, 0x8b]) {
            Some(Builder::new(limits, bytes.len()).tar_gz(bytes))
        } else {
            None
        }
    }

    /// A tree of one file at `path`.
    pub fn single_file(
        path: &str,
        data: Vec<u8>,
        executable: bool,
        limits: Limits,
    ) -> Result<CodeTree, ArchiveError> {
        let mut b = Builder::new(limits, data.len());
        b.file(path, data, executable)?;
        b.finish()
    }

    /// A tree of text files, path to contents.
    pub fn from_files<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
        limits: Limits,
    ) -> Result<CodeTree, ArchiveError> {
        let mut b = Builder::new(limits, 0);
        // Text sent as JSON is not compressed: no ratio applies.
        b.budget = limits.max_bytes;
        for (path, content) in files {
            b.file(path, content.as_bytes().to_vec(), false)?;
        }
        b.finish()
    }

    /// Set the execute bits of the regular file at `path` (never through a
    /// link); whether there is one. The entry point of a native function runs
    /// whatever mode its archive gave it, and zip tools often drop the mode.
    pub fn make_executable(&mut self, path: &str) -> bool {
        match self.entries.get_mut(path) {
            Some(Entry::File { executable, .. }) => {
                *executable = true;
                true
            }
            _ => false,
        }
    }

    /// Whether the tree has no files and no links.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, by path.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Bytes of file contents.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Contents of the file at `path`, following the tree's own links.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        let mut path = path.to_string();
        for _ in 0..MAX_LINK_HOPS {
            match self.entries.get(&path)? {
                Entry::File { data, .. } => return Some(data),
                Entry::Symlink(target) => path = resolve_lexically(&path, target)?,
            }
        }
        None
    }

    /// Content address: SHA-256 over every directory and entry: path, kind,
    /// mode and contents, each length-prefixed.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |tag: u8, path: &str, body: &[u8]| {
            h.update([tag]);
            h.update((path.len() as u64).to_be_bytes());
            h.update(path.as_bytes());
            h.update((body.len() as u64).to_be_bytes());
            h.update(body);
        };
        for dir in &self.dirs {
            field(b'd', dir, &[]);
        }
        for (path, entry) in &self.entries {
            match entry {
                Entry::File { data, executable } => {
                    field(if *executable { b'x' } else { b'f' }, path, data)
                }
                Entry::Symlink(target) => field(b'l', path, target.as_bytes()),
            }
        }
        hex::encode(h.finalize())
    }
}

/// Accumulates entries while enforcing the limits; [`Builder::finish`] checks
/// the links once everything is known.
struct Builder {
    tree: CodeTree,
    limits: Limits,
    /// Unpacked bytes allowed: the byte limit, or less by the ratio.
    budget: u64,
    /// Whether the ratio (rather than the byte limit) sets the budget.
    ratio_bound: bool,
    /// Entries seen, including those that add nothing (archive headers).
    seen: usize,
}

impl Builder {
    fn new(limits: Limits, packed: usize) -> Self {
        let by_ratio = limits
            .max_ratio
            .saturating_mul(packed as u64)
            .max(limits.ratio_floor);
        Builder {
            tree: CodeTree::default(),
            limits,
            budget: by_ratio.min(limits.max_bytes),
            ratio_bound: by_ratio < limits.max_bytes,
            seen: 0,
        }
    }

    fn too_large(&self) -> ArchiveError {
        if self.ratio_bound {
            ArchiveError::TooLarge(format!(
                "code unpacks to more than {} times its packed size",
                self.limits.max_ratio
            ))
        } else {
            ArchiveError::TooLarge(format!(
                "code exceeds {} bytes unpacked",
                self.limits.max_bytes
            ))
        }
    }

    /// Count one archive entry of any kind; refuses past the entry limit.
    fn count(&mut self) -> Result<(), ArchiveError> {
        self.seen += 1;
        // Headers that add nothing still cost time: bound them too.
        if self.seen > 2 * self.limits.max_entries + 16 {
            return Err(self.too_many());
        }
        Ok(())
    }

    fn too_many(&self) -> ArchiveError {
        ArchiveError::TooLarge(format!(
            "code has more than {} entries (files, links and directories)",
            self.limits.max_entries
        ))
    }

    fn room(&self) -> u64 {
        self.budget.saturating_sub(self.tree.total)
    }

    /// Place a new entry at `path` (already clean): it must be new, not a
    /// directory, and not inside a file or a link; its parents become directories.
    fn place(&mut self, path: &str) -> Result<(), ArchiveError> {
        if self.tree.entries.contains_key(path) {
            return Err(ArchiveError::invalid(format!(
                "{path} appears twice in the code"
            )));
        }
        if self.tree.dirs.contains(path) {
            return Err(ArchiveError::invalid(format!(
                "{path} is both a directory and a file or link"
            )));
        }
        self.add_parents(path)
    }

    fn add_parents(&mut self, path: &str) -> Result<(), ArchiveError> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let parent = &path[..end + i];
            if self.tree.entries.contains_key(parent) {
                return Err(ArchiveError::invalid(format!(
                    "{path} lies inside {parent}, which is a file or link"
                )));
            }
            if !self.tree.dirs.contains(parent) {
                self.tree.dirs.insert(parent.to_string());
                self.check_entry_count()?;
            }
            end += i + 1;
        }
        Ok(())
    }

    fn check_entry_count(&self) -> Result<(), ArchiveError> {
        if self.tree.entries.len() + self.tree.dirs.len() > self.limits.max_entries {
            return Err(self.too_many());
        }
        Ok(())
    }

    fn file(&mut self, path: &str, data: Vec<u8>, executable: bool) -> Result<(), ArchiveError> {
        let path = clean_path(path, &self.limits)?;
        if data.len() as u64 > self.room() {
            return Err(self.too_large());
        }
        self.place(&path)?;
        self.tree.total += data.len() as u64;
        self.tree
            .entries
            .insert(path, Entry::File { data, executable });
        self.check_entry_count()
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<(), ArchiveError> {
        let path = clean_path(path, &self.limits)?;
        if target.is_empty()
            || target.len() > MAX_LINK_TARGET
            || target.contains('\0')
            || target.contains('\\')
        {
            return Err(ArchiveError::invalid(format!(
                "link {path} has an invalid target"
            )));
        }
        if target.starts_with('/') {
            return Err(ArchiveError::invalid(format!(
                "link {path} points to an absolute path"
            )));
        }
        self.place(&path)?;
        self.tree
            .entries
            .insert(path, Entry::Symlink(target.to_string()));
        self.check_entry_count()
    }

    fn dir(&mut self, path: &str) -> Result<(), ArchiveError> {
        // `./` and the like name the root, which always exists.
        if path.split('/').all(|c| c.is_empty() || c == ".") {
            return Ok(());
        }
        let path = clean_path(path, &self.limits)?;
        if self.tree.entries.contains_key(&path) {
            return Err(ArchiveError::invalid(format!(
                "{path} is both a directory and a file or link"
            )));
        }
        self.add_parents(&path)?;
        if self.tree.dirs.insert(path) {
            self.check_entry_count()?;
        }
        Ok(())
    }

    /// Check every link (once, now that every entry is known) and hand out the tree.
    fn finish(self) -> Result<CodeTree, ArchiveError> {
        for (path, entry) in &self.tree.entries {
            if let Entry::Symlink(target) = entry {
                check_link(&self.tree, path, target)?;
            }
        }
        Ok(self.tree)
    }

    fn zip(mut self, bytes: &[u8]) -> Result<CodeTree, ArchiveError> {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| ArchiveError::invalid(format!("invalid zip archive: {e}")))?;
        // The central directory says how many entries follow: refuse before reading any.
        if zip.len() > self.limits.max_entries {
            return Err(self.too_many());
        }
        for i in 0..zip.len() {
            self.count()?;
            let mut f = zip
                .by_index(i)
                .map_err(|e| ArchiveError::invalid(format!("invalid zip entry: {e}")))?;
            let name = f.name().to_string();
            let mode = f.unix_mode().unwrap_or(0o644);
            if f.is_dir() {
                self.dir(&name)?;
                continue;
            }
            match mode & 0o170000 {
                0o120000 => {
                    let target = read_bounded(&mut f, MAX_LINK_TARGET as u64)
                        .map_err(|e| {
                            ArchiveError::invalid(format!("cannot read zip entry {name}: {e}"))
                        })?
                        .ok_or_else(|| {
                            ArchiveError::invalid(format!("link {name} has an invalid target"))
                        })?;
                    let target = String::from_utf8(target).map_err(|_| {
                        ArchiveError::invalid(format!("link {name} has a non-UTF-8 target"))
                    })?;
                    self.symlink(&name, &target)?;
                }
                0 | 0o100000 => {
                    if f.size() > self.room() {
                        return Err(self.too_large());
                    }
                    // The declared size may lie: read at most the remaining budget.
                    let data = read_bounded(&mut f, self.room())
                        .map_err(|e| {
                            ArchiveError::invalid(format!("cannot read zip entry {name}: {e}"))
                        })?
                        .ok_or_else(|| self.too_large())?;
                    self.file(&name, data, mode & 0o111 != 0)?;
                }
                _ => {
                    return Err(ArchiveError::invalid(format!(
                        "zip entry {name} is not a file, link or directory"
                    )))
                }
            }
        }
        self.finish()
    }

    fn tar_gz(mut self, bytes: &[u8]) -> Result<CodeTree, ArchiveError> {
        // Every decompressed byte counts, headers and skipped data included:
        // a tar entry may declare gigabytes that the reader would inflate just
        // to skip them.
        let cap = self
            .budget
            .saturating_add(1024 * (self.limits.max_entries as u64 * 2 + 64));
        let exceeded = Rc::new(Cell::new(false));
        let stream = Capped {
            inner: flate2::read::GzDecoder::new(bytes),
            left: cap,
            exceeded: exceeded.clone(),
        };
        let mut archive = tar::Archive::new(stream);
        let result = self.tar_entries(&mut archive);
        match result {
            Err(_) if exceeded.get() => Err(self.too_large()),
            Err(e) => Err(e),
            Ok(()) => self.finish(),
        }
    }

    fn tar_entries<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<(), ArchiveError> {
        let bad = |e: std::io::Error| ArchiveError::invalid(format!("invalid tar.gz archive: {e}"));
        for entry in archive.entries().map_err(bad)? {
            self.count()?;
            let mut e = entry.map_err(bad)?;
            let name = String::from_utf8(e.path_bytes().into_owned())
                .map_err(|_| ArchiveError::invalid("tar entry with a non-UTF-8 name"))?;
            let kind = e.header().entry_type();
            let mode = e.header().mode().unwrap_or(0o644);
            match kind {
                tar::EntryType::Directory => self.dir(&name)?,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if e.size() > self.room() {
                        return Err(self.too_large());
                    }
                    let data = read_bounded(&mut e, self.room())
                        .map_err(bad)?
                        .ok_or_else(|| self.too_large())?;
                    self.file(&name, data, mode & 0o111 != 0)?;
                }
                tar::EntryType::Symlink => {
                    let target = e
                        .link_name_bytes()
                        .and_then(|t| String::from_utf8(t.into_owned()).ok())
                        .ok_or_else(|| {
                            ArchiveError::invalid(format!("tar link {name} has no valid target"))
                        })?;
                    self.symlink(&name, &target)?;
                }
                tar::EntryType::Link => {
                    return Err(ArchiveError::invalid(format!(
                        "tar entry {name} is a hard link; not supported"
                    )))
                }
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
                other => {
                    return Err(ArchiveError::invalid(format!(
                        "tar entry {name} has unsupported type {other:?}"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// A reader that fails once more than `left` bytes were asked of it.
struct Capped<R> {
    inner: R,
    left: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            self.exceeded.set(true);
            return Err(std::io::Error::other("archive too large"));
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Read to the end, or `None` when there is more than `max` bytes.
fn read_bounded(r: &mut impl Read, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    r.take(max.saturating_add(1)).read_to_end(&mut data)?;
    Ok((data.len() as u64 <= max).then_some(data))
}

/// Normalise a relative path: `a/./b` is `a/b`; absolute paths, `..`, empty
/// paths, backslashes, NUL and paths over the length or depth limits are refused.
fn clean_path(path: &str, limits: &Limits) -> Result<String, ArchiveError> {
    if path.contains('\0') || path.contains('\\') {
        return Err(ArchiveError::invalid(format!(
            "invalid path {path:?} in code"
        )));
    }
    if path.len() > limits.max_path_len {
        return Err(ArchiveError::invalid(format!(
            "a path in the code is longer than {} bytes",
            limits.max_path_len
        )));
    }
    if path.starts_with('/') {
        return Err(ArchiveError::invalid(format!(
            "path {path:?} in code is absolute"
        )));
    }
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(ArchiveError::invalid(format!(
                    "path {path:?} in code escapes its directory (..)"
                )))
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(ArchiveError::invalid(format!(
            "empty path {path:?} in code"
        )));
    }
    if parts.len() > limits.max_depth {
        return Err(ArchiveError::invalid(format!(
            "path {path:?} in code is more than {} levels deep",
            limits.max_depth
        )));
    }
    Ok(parts.join("/"))
}

/// A link's target must name something in the tree, reached only through
/// directories of the tree: then the kernel, walking it on disk, takes exactly
/// the path checked here, and no chain of links can lead anywhere else.
fn check_link(tree: &CodeTree, link: &str, target: &str) -> Result<(), ArchiveError> {
    let outside = || ArchiveError::invalid(format!("link {link} points outside the code tree"));
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    let components: Vec<&str> = target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for (i, c) in components.iter().enumerate() {
        if *c == ".." {
            parts.pop().ok_or_else(outside)?;
        } else {
            parts.push(c);
        }
        let here = parts.join("/");
        let last = i + 1 == components.len();
        if !last && !here.is_empty() && !tree.dirs.contains(&here) {
            return Err(ArchiveError::invalid(format!(
                "link {link} passes through {here}, which is not a directory of the code"
            )));
        }
    }
    let resolved = parts.join("/");
    if resolved.is_empty() {
        return Err(ArchiveError::invalid(format!(
            "link {link} points to the root of the code"
        )));
    }
    if !tree.entries.contains_key(&resolved) && !tree.dirs.contains(&resolved) {
        return Err(ArchiveError::invalid(format!(
            "link {link} points to {resolved}, which is not in the code"
        )));
    }
    Ok(())
}

/// Resolve a (validated) link target from the link's directory.
fn resolve_lexically(link: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    pub fn tar_gz(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            // Raw name bytes: the safe setters refuse `..`, which is the point here.
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if let Some(l) = link {
                let gnu = h.as_gnu_mut().unwrap();
                gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        let raw = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        gz.finish().unwrap()
    }

    fn decode(bytes: &[u8]) -> Result<CodeTree, ArchiveError> {
        CodeTree::decode_archive(bytes, Limits::default()).expect("an archive")
    }

    const F: tar::EntryType = tar::EntryType::Regular;
    const L: tar::EntryType = tar::EntryType::Symlink;
    const D: tar::EntryType = tar::EntryType::Directory;

    #[test]
    fn refuses_escaping_entries() {
        for (name, kind, link) in [
            ("../evil.py", F, None),
            ("/etc/evil.py", F, None),
            ("a/../../evil.py", F, None),
            ("link", L, Some("/etc/passwd")),
            ("link", L, Some("../../etc/passwd")),
            ("hard", tar::EntryType::Link, Some("/etc/passwd")),
        ] {
            let gz = tar_gz(&[(name, kind, b"hi", link)]);
            let err = decode(&gz).unwrap_err();
            assert!(matches!(err, ArchiveError::Invalid(_)), "{name}: {err}");
        }
    }

    /// The chain that reached the host before: links resolving to the tree's
    /// root, then a link through them, then a file written through both.
    #[test]
    fn refuses_the_link_chain_attack() {
        let gz = tar_gz(&[
            ("a/b/c/", D, b"", None),
            ("a/b/c/up", L, b"", Some("../../..")),
            ("a/b/c/out", L, b"", Some("up/../../../../etc")),
            ("a/b/c/out/cron.d/evil", F, b"x", None),
        ]);
        assert!(decode(&gz).is_err());
        // Each piece alone is refused too.
        let root_link = tar_gz(&[("a/up", L, b"", Some(".."))]);
        assert!(decode(&root_link).unwrap_err().to_string().contains("root"));
        let through_link = tar_gz(&[
            ("d/f", F, b"x", None),
            ("l", L, b"", Some("d")),
            ("m", L, b"", Some("l/f")),
        ]);
        assert!(decode(&through_link)
            .unwrap_err()
            .to_string()
            .contains("passes through"));
        let inside_link = tar_gz(&[
            ("d/f", F, b"x", None),
            ("l", L, b"", Some("d")),
            ("l/g", F, b"x", None),
        ]);
        assert!(decode(&inside_link)
            .unwrap_err()
            .to_string()
            .contains("inside"));
    }

    #[test]
    fn accepts_in_tree_links() {
        let gz = tar_gz(&[
            ("lib/real.py", F, b"hi", None),
            ("main.py", L, b"", Some("lib/real.py")),
            ("lib/alias", L, b"", Some("./real.py")),
            ("libdir", L, b"", Some("lib")),
        ]);
        let t = decode(&gz).unwrap();
        assert_eq!(t.file("main.py"), Some(&b"hi"[..]));
        assert_eq!(t.file("lib/alias"), Some(&b"hi"[..]));
    }

    #[test]
    fn refuses_conflicts_and_duplicates() {
        for entries in [
            vec![("a", F, &b"x"[..], None), ("a/b", F, b"x", None)],
            vec![("a/b", F, b"x", None), ("a", F, b"x", None)],
            vec![("a", F, b"x", None), ("a", F, b"y", None)],
            vec![("a", F, b"x", None), ("a/", D, b"", None)],
        ] {
            assert!(decode(&tar_gz(&entries)).is_err(), "{entries:?}");
        }
    }

    #[test]
    fn links_count_toward_the_entry_limit() {
        let names: Vec<String> = (0..20).map(|i| format!("l{i}")).collect();
        let mut entries = vec![("f", F, &b"x"[..], None)];
        for n in &names {
            entries.push((n.as_str(), L, b"", Some("f")));
        }
        let limits = Limits {
            max_entries: 10,
            ..Limits::default()
        };
        let err = CodeTree::decode_archive(&tar_gz(&entries), limits)
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge(_)), "{err}");
    }

    #[test]
    fn many_links_are_checked_in_linear_time() {
        let names: Vec<String> = (0..9000).map(|i| format!("d/l{i}")).collect();
        let mut entries = vec![("d/f", F, &b"x"[..], None)];
        for n in &names {
            entries.push((n.as_str(), L, b"", Some("f")));
        }
        let gz = tar_gz(&entries);
        let started = std::time::Instant::now();
        let t = decode(&gz).unwrap();
        assert_eq!(t.entries().count(), 9001);
        // Quadratic checking took tens of seconds for this many; linear is milliseconds.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn refuses_bombs_by_ratio_and_by_size() {
        let zeros = vec![0u8; 64 * 1024 * 1024];
        let gz = tar_gz(&[("zeros", F, &zeros, None)]);
        assert!(gz.len() < 1024 * 1024);
        let err = decode(&gz).unwrap_err();
        assert!(err.to_string().contains("times its packed size"), "{err}");

        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            z.start_file("main.py", zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(&[b'#'; 4096]).unwrap();
            z.finish().unwrap();
        }
        let small = Limits {
            max_bytes: 1000,
            ..Limits::default()
        };
        let err = CodeTree::decode_archive(buf.get_ref(), small)
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("1000 bytes"), "{err}");
    }

    #[test]
    fn a_tar_header_declaring_gigabytes_is_refused_without_inflating_them() {
        // A directory entry whose size field claims 8 GiB: skipping it would
        // inflate 8 GiB of zeros.
        let mut raw = Vec::new();
        let mut h = tar::Header::new_gnu();
        h.set_path("d/").unwrap();
        h.set_entry_type(D);
        h.set_size(8 << 30);
        h.set_cksum();
        raw.extend_from_slice(h.as_bytes());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&raw).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..64 {
            gz.write_all(&chunk).unwrap();
        }
        let gz = gz.finish().unwrap();
        let started = std::time::Instant::now();
        assert!(decode(&gz).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn zip_slip_and_bad_paths() {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            z.start_file("../../evil.py", zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(b"x").unwrap();
            z.finish().unwrap();
        }
        assert!(decode(buf.get_ref()).is_err());
        let limits = Limits::default();
        assert!(clean_path(&"a/".repeat(65), &limits).is_err());
        assert!(clean_path(&"x".repeat(2000), &limits).is_err());
        assert!(clean_path("a\\b", &limits).is_err());
        assert_eq!(clean_path("./a//b/.", &limits).unwrap(), "a/b");
    }

    #[test]
    fn hash_depends_on_modes_and_layout() {
        let a = CodeTree::single_file("x", b"1".to_vec(), false, Limits::default()).unwrap();
        let b = CodeTree::single_file("x", b"1".to_vec(), true, Limits::default()).unwrap();
        let c = CodeTree::from_files([("x", "1")], Limits::default()).unwrap();
        assert_ne!(a.sha256(), b.sha256());
        assert_eq!(a.sha256(), c.sha256());
    }
}
