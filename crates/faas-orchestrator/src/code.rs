//! Function code: decoding what the user sent (zip, tar.gz, one file, or a map of
//! files), refusing anything that could escape its directory, and storing the
//! tree content-addressed under `<data>/code/<sha256>/`.
//!
//! Nothing touches the disk until the whole upload has been validated in memory,
//! so a rejected deploy leaves nothing behind.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use faas_common::Language;
use sha2::{Digest, Sha256};

use crate::OrchestratorError;

/// Limits on an upload, against zip bombs and runaway trees.
#[derive(Debug, Clone, Copy)]
pub struct CodeLimits {
    /// Most bytes after decompression.
    pub max_bytes: u64,
    /// Most entries.
    pub max_files: usize,
}

impl Default for CodeLimits {
    fn default() -> Self {
        CodeLimits {
            max_bytes: 256 * 1024 * 1024,
            max_files: 10_000,
        }
    }
}

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

/// A validated code tree: relative paths without `..`, links that stay inside.
#[derive(Debug, Default, Clone)]
pub struct CodeTree {
    entries: BTreeMap<String, Entry>,
    total: u64,
}

impl CodeTree {
    /// Decode the deploy request's `code_base64` / `files`.
    pub fn from_request(
        code_base64: Option<&str>,
        files: Option<&BTreeMap<String, String>>,
        language: Language,
        handler: &str,
        limits: CodeLimits,
    ) -> Result<CodeTree, OrchestratorError> {
        let mut tree = CodeTree::default();
        match (code_base64, files) {
            (Some(_), Some(_)) => {
                return Err(bad("give either code_base64 or files, not both"));
            }
            (None, None) => return Err(bad("code_base64 or files is required")),
            (None, Some(files)) => {
                if files.is_empty() {
                    return Err(bad("files must not be empty"));
                }
                for (path, content) in files {
                    tree.add_file(path, content.as_bytes().to_vec(), false, limits)?;
                }
            }
            (Some(b64), None) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| bad(format!("code_base64 is not valid base64: {e}")))?;
                if bytes.is_empty() {
                    return Err(bad("code_base64 is empty"));
                }
                if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
                    tree.add_zip(&bytes, limits)?;
                } else if bytes.starts_with(&[0x1f, 0x8b]) {
                    tree.add_tar_gz(&bytes, limits)?;
                } else {
                    let name = single_file_name(language, handler)?;
                    tree.add_file(&name, bytes, language.is_process_per_call(), limits)?;
                }
            }
        }
        tree.check_links()?;
        Ok(tree)
    }

    /// Whether `path` is a file (or a link to one) in the tree.
    pub fn contains_file(&self, path: &str) -> bool {
        self.file(path).is_some()
    }

    /// Contents of `path`, following in-tree links.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        let mut path = path.to_string();
        for _ in 0..16 {
            match self.entries.get(&path)? {
                Entry::File { data, .. } => return Some(data),
                Entry::Symlink(target) => path = resolve(&path, target)?,
            }
        }
        None
    }

    /// Content address: SHA-256 over every entry's path, kind, mode and contents.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        for (path, entry) in &self.entries {
            h.update((path.len() as u64).to_be_bytes());
            h.update(path.as_bytes());
            match entry {
                Entry::File { data, executable } => {
                    h.update([b'f', u8::from(*executable)]);
                    h.update((data.len() as u64).to_be_bytes());
                    h.update(data);
                }
                Entry::Symlink(t) => {
                    h.update([b'l']);
                    h.update((t.len() as u64).to_be_bytes());
                    h.update(t.as_bytes());
                }
            }
        }
        hex::encode(h.finalize())
    }

    /// Write the tree to `<root>/<sha256>` unless it is already there; returns the directory.
    pub fn store(&self, root: &Path) -> Result<(String, PathBuf), OrchestratorError> {
        let sha = self.sha256();
        let dest = root.join(&sha);
        if dest.is_dir() {
            return Ok((sha, dest));
        }
        std::fs::create_dir_all(root).map_err(io("create code dir"))?;
        let tmp = root.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let result = self.write_to(&tmp).and_then(|()| {
            std::fs::rename(&tmp, &dest).or_else(|e| {
                // Another deploy of the same code won the race: theirs is identical.
                if dest.is_dir() {
                    Ok(())
                } else {
                    Err(io("store code")(e))
                }
            })
        });
        if tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result.map(|()| (sha, dest))
    }

    fn write_to(&self, dir: &Path) -> Result<(), OrchestratorError> {
        std::fs::create_dir_all(dir).map_err(io("create code dir"))?;
        set_mode(dir, 0o755)?;
        for (rel, entry) in &self.entries {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io("create code subdir"))?;
            }
            match entry {
                Entry::File { data, executable } => {
                    std::fs::write(&path, data).map_err(io("write code file"))?;
                    set_mode(&path, if *executable { 0o755 } else { 0o644 })?;
                }
                Entry::Symlink(target) => {
                    std::os::unix::fs::symlink(target, &path).map_err(io("write code link"))?
                }
            }
        }
        // Directories created implicitly get the umask's mode; the sandbox user must traverse them.
        for rel in self.entries.keys() {
            let mut p = Path::new(rel).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                set_mode(&dir.join(d), 0o755)?;
                p = d.parent();
            }
        }
        Ok(())
    }

    fn add_file(
        &mut self,
        path: &str,
        data: Vec<u8>,
        executable: bool,
        limits: CodeLimits,
    ) -> Result<(), OrchestratorError> {
        let path = clean_path(path)?;
        self.account(data.len() as u64, limits)?;
        self.entries.insert(path, Entry::File { data, executable });
        Ok(())
    }

    fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), OrchestratorError> {
        let path = clean_path(path)?;
        if target.starts_with('/') {
            return Err(bad(format!(
                "archive link {path} points to an absolute path"
            )));
        }
        resolve(&path, target)
            .ok_or_else(|| bad(format!("archive link {path} points outside the code tree")))?;
        self.entries
            .insert(path, Entry::Symlink(target.to_string()));
        Ok(())
    }

    fn account(&mut self, bytes: u64, limits: CodeLimits) -> Result<(), OrchestratorError> {
        self.total += bytes;
        if self.total > limits.max_bytes {
            return Err(OrchestratorError::TooLarge(format!(
                "code exceeds {} bytes unpacked",
                limits.max_bytes
            )));
        }
        if self.entries.len() >= limits.max_files {
            return Err(bad(format!(
                "code has more than {} files",
                limits.max_files
            )));
        }
        Ok(())
    }

    fn add_zip(&mut self, bytes: &[u8], limits: CodeLimits) -> Result<(), OrchestratorError> {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| bad(format!("invalid zip archive: {e}")))?;
        for i in 0..zip.len() {
            let mut f = zip
                .by_index(i)
                .map_err(|e| bad(format!("invalid zip entry: {e}")))?;
            let name = f.name().to_string();
            let mode = f.unix_mode().unwrap_or(0o644);
            if f.is_dir() {
                check_dir_path(&name)?;
                continue;
            }
            let mut data = Vec::new();
            // Read at most one byte past the remaining budget: enough to detect a bomb.
            let budget = limits.max_bytes.saturating_sub(self.total) + 1;
            (&mut f)
                .take(budget)
                .read_to_end(&mut data)
                .map_err(|e| bad(format!("cannot read zip entry {name}: {e}")))?;
            match mode & 0o170000 {
                0o120000 => {
                    let target = String::from_utf8(data)
                        .map_err(|_| bad(format!("zip link {name} has a non-UTF-8 target")))?;
                    self.add_symlink(&name, &target)?;
                }
                0 | 0o100000 => self.add_file(&name, data, mode & 0o111 != 0, limits)?,
                _ => {
                    return Err(bad(format!(
                        "zip entry {name} is not a file, link or directory"
                    )))
                }
            }
        }
        Ok(())
    }

    fn add_tar_gz(&mut self, bytes: &[u8], limits: CodeLimits) -> Result<(), OrchestratorError> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("invalid tar.gz archive: {e}")))?;
        for entry in entries {
            let mut e = entry.map_err(|e| bad(format!("invalid tar.gz archive: {e}")))?;
            let name = String::from_utf8(e.path_bytes().into_owned())
                .map_err(|_| bad("tar entry with a non-UTF-8 name"))?;
            let kind = e.header().entry_type();
            let mode = e.header().mode().unwrap_or(0o644);
            match kind {
                tar::EntryType::Directory => check_dir_path(&name)?,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut data = Vec::new();
                    let budget = limits.max_bytes.saturating_sub(self.total) + 1;
                    (&mut e)
                        .take(budget)
                        .read_to_end(&mut data)
                        .map_err(|err| bad(format!("cannot read tar entry {name}: {err}")))?;
                    self.add_file(&name, data, mode & 0o111 != 0, limits)?;
                }
                tar::EntryType::Symlink => {
                    let target = e
                        .link_name()
                        .ok()
                        .flatten()
                        .and_then(|t| t.to_str().map(str::to_string))
                        .ok_or_else(|| bad(format!("tar link {name} has no valid target")))?;
                    self.add_symlink(&name, &target)?;
                }
                tar::EntryType::Link => {
                    return Err(bad(format!(
                        "tar entry {name} is a hard link; not supported"
                    )))
                }
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
                other => {
                    return Err(bad(format!(
                        "tar entry {name} has unsupported type {other:?}"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Links must end at something in the tree (a file or a directory prefix).
    fn check_links(&self) -> Result<(), OrchestratorError> {
        for (path, entry) in &self.entries {
            if let Entry::Symlink(target) = entry {
                let resolved = resolve(path, target)
                    .ok_or_else(|| bad(format!("link {path} points outside the code tree")))?;
                let is_dir = self
                    .entries
                    .keys()
                    .any(|k| k.starts_with(&format!("{resolved}/")));
                if !self.entries.contains_key(&resolved) && !is_dir && !resolved.is_empty() {
                    return Err(bad(format!(
                        "link {path} points to {resolved}, which is not in the code"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Where a single uploaded file goes, from the handler.
fn single_file_name(language: Language, handler: &str) -> Result<String, OrchestratorError> {
    match language {
        Language::Shell | Language::Native => Ok(handler.to_string()),
        Language::Python | Language::Node => {
            let (module, _) = split_handler(handler)?;
            let ext = if language == Language::Python {
                "py"
            } else {
                "js"
            };
            Ok(format!("{}.{ext}", module.replace('.', "/")))
        }
    }
}

/// `pkg.module.func` -> (`pkg.module`, `func`).
pub fn split_handler(handler: &str) -> Result<(&str, &str), OrchestratorError> {
    let (module, func) = handler.rsplit_once('.').ok_or_else(|| {
        bad(format!(
            "handler {handler:?} must look like module.function"
        ))
    })?;
    let ident = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    if !module.split('.').all(ident) || !ident(func) {
        return Err(bad(format!(
            "handler {handler:?} must look like module.function"
        )));
    }
    Ok((module, func))
}

/// Check that the handler exists in the tree; returns nothing, errs with a clear reason.
pub fn check_handler(
    tree: &CodeTree,
    language: Language,
    handler: &str,
) -> Result<(), OrchestratorError> {
    match language {
        Language::Shell | Language::Native => {
            let path = clean_path(handler)?;
            if !tree.contains_file(&path) {
                return Err(bad(format!("handler {handler:?} is not in the code")));
            }
        }
        Language::Python | Language::Node => {
            let (module, func) = split_handler(handler)?;
            let base = module.replace('.', "/");
            let candidates: Vec<String> = if language == Language::Python {
                vec![format!("{base}.py"), format!("{base}/__init__.py")]
            } else {
                vec![
                    format!("{base}.js"),
                    format!("{base}.cjs"),
                    format!("{base}/index.js"),
                ]
            };
            let source = candidates
                .iter()
                .find_map(|c| tree.file(c))
                .ok_or_else(|| {
                    bad(format!(
                        "handler module not found: expected {}",
                        candidates.join(" or ")
                    ))
                })?;
            // A cheap static check: the function's name must appear in its module.
            // It cannot prove the function exists, but it catches typos before any sandbox runs.
            let text = String::from_utf8_lossy(source);
            if !contains_word(&text, func) {
                return Err(bad(format!(
                    "handler function {func:?} is not defined in module {module:?}"
                )));
            }
        }
    }
    Ok(())
}

fn contains_word(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Normalise a relative path, refusing absolute paths, `..` and empty names.
fn clean_path(path: &str) -> Result<String, OrchestratorError> {
    if path.contains('\0') || path.contains('\\') {
        return Err(bad(format!("invalid path {path:?} in code")));
    }
    let mut parts = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().expect("from &str").to_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(bad(format!(
                    "path {path:?} in code escapes its directory (..)"
                )))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(format!("path {path:?} in code is absolute")))
            }
        }
    }
    if parts.is_empty() {
        return Err(bad(format!("empty path {path:?} in code")));
    }
    Ok(parts.join("/"))
}

/// Directory entries may name the archive root (`./`); otherwise as [`clean_path`].
fn check_dir_path(path: &str) -> Result<(), OrchestratorError> {
    if Path::new(path).components().all(|c| c == Component::CurDir) {
        return Ok(());
    }
    clean_path(path).map(|_| ())
}

/// Resolve link `target` relative to the directory of `link`; `None` if it escapes.
fn resolve(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
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

fn set_mode(path: &Path, mode: u32) -> Result<(), OrchestratorError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod code"))
}

fn bad(msg: impl Into<String>) -> OrchestratorError {
    OrchestratorError::BadRequest(msg.into())
}

fn io(context: &'static str) -> impl Fn(std::io::Error) -> OrchestratorError {
    move |e| OrchestratorError::Internal(format!("{context}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let raw = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        gz.finish().unwrap()
    }

    fn raw_tar_entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
    ) {
        let mut h = tar::Header::new_gnu();
        // Write the name bytes directly: the safe setters refuse `..`, which is the point here.
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(if kind == tar::EntryType::Regular {
            2
        } else {
            0
        });
        h.set_mode(0o644);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        let data: &[u8] = if kind == tar::EntryType::Regular {
            b"hi"
        } else {
            b""
        };
        b.append(&h, data).unwrap();
    }

    fn from_b64(bytes: &[u8]) -> Result<CodeTree, OrchestratorError> {
        CodeTree::from_request(
            Some(&b64(bytes)),
            None,
            Language::Python,
            "main.handler",
            CodeLimits::default(),
        )
    }

    #[test]
    fn single_file_takes_the_module_name() {
        let t = from_b64(b"def handler(e, c):\n  return e\n").unwrap();
        assert!(t.contains_file("main.py"));
        check_handler(&t, Language::Python, "main.handler").unwrap();
        assert!(check_handler(&t, Language::Python, "main.other").is_err());
        assert!(check_handler(&t, Language::Python, "nope.handler").is_err());
    }

    #[test]
    fn refuses_escaping_tar_entries() {
        for (name, kind, link) in [
            ("../evil.py", tar::EntryType::Regular, None),
            ("/etc/evil.py", tar::EntryType::Regular, None),
            ("link", tar::EntryType::Symlink, Some("/etc/passwd")),
            ("link", tar::EntryType::Symlink, Some("../../etc/passwd")),
            ("hard", tar::EntryType::Link, Some("/etc/passwd")),
        ] {
            let gz = tar_gz(|b| raw_tar_entry(b, name, kind, link));
            let err = from_b64(&gz).unwrap_err();
            assert!(
                matches!(err, OrchestratorError::BadRequest(_)),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn accepts_in_tree_links_and_stores_by_content() {
        let gz = tar_gz(|b| {
            raw_tar_entry(b, "lib/real.py", tar::EntryType::Regular, None);
            raw_tar_entry(b, "main.py", tar::EntryType::Symlink, Some("lib/real.py"));
        });
        let t = from_b64(&gz).unwrap();
        assert_eq!(t.file("main.py"), Some(&b"hi"[..]));
        let dir = tempfile::tempdir().unwrap();
        let (sha, path) = t.store(dir.path()).unwrap();
        assert_eq!(std::fs::read(path.join("main.py")).unwrap(), b"hi");
        let (sha2, _) = t.store(dir.path()).unwrap();
        assert_eq!(sha, sha2);
    }

    #[test]
    fn refuses_zip_slip_and_zip_bombs() {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            z.start_file("../../evil.py", zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(b"x").unwrap();
            z.finish().unwrap();
        }
        assert!(from_b64(buf.get_ref()).is_err());

        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            z.start_file("main.py", zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(&vec![b'#'; 4096]).unwrap();
            z.finish().unwrap();
        }
        let small = CodeLimits {
            max_bytes: 1000,
            max_files: 10,
        };
        let err = CodeTree::from_request(
            Some(&b64(buf.get_ref())),
            None,
            Language::Python,
            "main.handler",
            small,
        )
        .unwrap_err();
        assert!(matches!(err, OrchestratorError::TooLarge(_)));
    }

    #[test]
    fn files_map_and_conflicts() {
        let files = BTreeMap::from([(
            "index.js".to_string(),
            "exports.handler = async () => 1".to_string(),
        )]);
        let t = CodeTree::from_request(
            None,
            Some(&files),
            Language::Node,
            "index.handler",
            CodeLimits::default(),
        )
        .unwrap();
        check_handler(&t, Language::Node, "index.handler").unwrap();
        assert!(CodeTree::from_request(
            Some("aGk="),
            Some(&files),
            Language::Node,
            "index.handler",
            CodeLimits::default()
        )
        .is_err());
        assert!(CodeTree::from_request(
            None,
            None,
            Language::Node,
            "index.handler",
            CodeLimits::default()
        )
        .is_err());
        assert!(CodeTree::from_request(
            Some("!!!"),
            None,
            Language::Node,
            "index.handler",
            CodeLimits::default()
        )
        .is_err());
    }

    #[test]
    fn handler_syntax() {
        assert!(split_handler("handler").is_err());
        assert!(split_handler("a/b.c").is_err());
        assert!(split_handler("pkg.mod.fn").is_ok());
        assert!(!contains_word("def handler_x(): pass", "handler"));
        assert!(contains_word("def handler(e): pass", "handler"));
    }
}
