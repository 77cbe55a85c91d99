//! Dependency manifests in a function's code: `requirements.txt` (Python),
//! `package.json` with an optional `package-lock.json` (Node.js), at the root
//! of the uploaded tree. They are read here, never executed: every entry must
//! pass [`crate::deps`]'s registry-only check, and the result is merged with
//! the definition's `dependencies` list.
//!
//! What is accepted:
//! - `requirements.txt`: one requirement per line, `#` comments, blank lines
//!   and `\` continuations. Options (`-r`, `-e`, `--index-url`, `--hash`, ...)
//!   are refused: they would read other files, other indexes or local paths.
//! - `package.json`: `dependencies` and `optionalDependencies` (name to
//!   registry range); `devDependencies` are not installed.
//! - `package-lock.json` (lockfile version 2 or 3): every package must come
//!   from the registry (`resolved` under [`NPM_REGISTRY`] or the operator's,
//!   with an `integrity`), none may be a link to a local directory.

use std::collections::BTreeMap;

use crate::deps::{package_name, validate, DependencyError};
use crate::Language;

/// The Python manifest's file name.
pub const REQUIREMENTS_TXT: &str = "requirements.txt";
/// The Node.js manifest's file name.
pub const PACKAGE_JSON: &str = "package.json";
/// The Node.js lock file's file name.
pub const PACKAGE_LOCK_JSON: &str = "package-lock.json";
/// The public npm registry, where lock files may point unless the operator
/// configures another.
pub const NPM_REGISTRY: &str = "https://registry.npmjs.org/";
/// Most dependencies a function may have once its list and manifest are merged.
pub const MAX_MERGED: usize = 500;
/// Most packages a lock file may list.
pub const MAX_LOCKED: usize = 5000;

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// An entry is not a registry requirement.
    #[error("{file}: {source}")]
    Dependency {
        /// The manifest.
        file: &'static str,
        /// What is wrong with the entry.
        source: DependencyError,
    },
    /// A line or field the platform does not accept.
    #[error("{file}: {why}")]
    Unsupported {
        /// The manifest.
        file: &'static str,
        /// What and why.
        why: String,
    },
    /// The same package with two different requirements.
    #[error("dependency conflict: {package} is required as {first:?} and as {second:?}")]
    Conflict {
        /// The package's name.
        package: String,
        /// One requirement.
        first: String,
        /// The other.
        second: String,
    },
    /// More than [`MAX_MERGED`] dependencies.
    #[error("at most {MAX_MERGED} dependencies after merging the manifest")]
    TooMany,
}

/// Requirements of a `requirements.txt`, in order.
pub fn requirements_txt(text: &str) -> Result<Vec<String>, ManifestError> {
    let unsupported = |line: usize, why: String| ManifestError::Unsupported {
        file: REQUIREMENTS_TXT,
        why: format!("line {line}: {why}"),
    };
    let mut out = Vec::new();
    let mut logical = String::new();
    let mut first_line = 0;
    for (i, raw) in text.lines().enumerate() {
        if logical.is_empty() {
            first_line = i + 1;
        }
        let (body, continued) = match raw.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (raw, false),
        };
        logical.push_str(body);
        if continued {
            continue;
        }
        let line = strip_comment(&logical).trim().to_string();
        logical.clear();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('-') || line.contains(" -") {
            return Err(unsupported(
                first_line,
                format!(
                    "{:?}: pip options (-r, -c, -e, --index-url, --hash, ...) are not \
                     supported; list one registry requirement per line",
                    crate::contract::truncate(&line, 80)
                ),
            ));
        }
        validate(Language::Python, std::slice::from_ref(&line)).map_err(|source| {
            ManifestError::Dependency {
                file: REQUIREMENTS_TXT,
                source,
            }
        })?;
        out.push(line);
        if out.len() > MAX_MERGED {
            return Err(ManifestError::TooMany);
        }
    }
    Ok(out)
}

/// pip's rule: `#` starts a comment at the line's start or after whitespace.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// `name@range` for every entry of a `package.json`'s `dependencies` and
/// `optionalDependencies`.
pub fn package_json(bytes: &[u8]) -> Result<Vec<String>, ManifestError> {
    let unsupported = |why: String| ManifestError::Unsupported {
        file: PACKAGE_JSON,
        why,
    };
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| unsupported(format!("not valid JSON: {e}")))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| unsupported("not a JSON object".into()))?;
    let mut out = Vec::new();
    for field in ["dependencies", "optionalDependencies"] {
        let Some(deps) = obj.get(field) else {
            continue;
        };
        let deps = deps
            .as_object()
            .ok_or_else(|| unsupported(format!("{field} is not an object")))?;
        for (name, range) in deps {
            let range = range
                .as_str()
                .ok_or_else(|| unsupported(format!("{field}.{name} is not a string")))?;
            let spec = if range.trim().is_empty() {
                name.clone()
            } else {
                format!("{name}@{}", range.trim())
            };
            validate(Language::Node, std::slice::from_ref(&spec)).map_err(|source| {
                ManifestError::Dependency {
                    file: PACKAGE_JSON,
                    source,
                }
            })?;
            out.push(spec);
            if out.len() > MAX_MERGED {
                return Err(ManifestError::TooMany);
            }
        }
    }
    Ok(out)
}

/// Check a `package-lock.json`: version 2 or 3, at most [`MAX_LOCKED`]
/// packages, each from `registry` (or [`NPM_REGISTRY`]) with an integrity
/// hash, none a link, none installed outside `node_modules/`.
pub fn check_package_lock(bytes: &[u8], registry: Option<&str>) -> Result<(), ManifestError> {
    let unsupported = |why: String| ManifestError::Unsupported {
        file: PACKAGE_LOCK_JSON,
        why,
    };
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| unsupported(format!("not valid JSON: {e}")))?;
    let version = doc.get("lockfileVersion").and_then(|v| v.as_u64());
    if !matches!(version, Some(2 | 3)) {
        return Err(unsupported(
            "only lockfileVersion 2 and 3 are supported (npm 7 or newer writes them)".into(),
        ));
    }
    let packages = doc
        .get("packages")
        .and_then(|p| p.as_object())
        .ok_or_else(|| unsupported("it has no \"packages\" object".into()))?;
    if packages.len() > MAX_LOCKED {
        return Err(unsupported(format!("more than {MAX_LOCKED} packages")));
    }
    let registry = registry.unwrap_or(NPM_REGISTRY);
    let registry = registry.trim_end_matches('/');
    for (path, entry) in packages {
        if path.is_empty() {
            // The project itself: nothing to fetch, so nothing may say where from.
            if entry.get("resolved").is_some() || entry.get("link").is_some() {
                return Err(unsupported(
                    "its root package has a \"resolved\" or \"link\" field".into(),
                ));
            }
            continue;
        }
        let bad = |why: &str| unsupported(format!("package {path:?} {why}"));
        let in_node_modules = path.starts_with("node_modules/")
            && path
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\\'));
        if !in_node_modules {
            return Err(bad("is not under node_modules/"));
        }
        if entry.get("link").and_then(|l| l.as_bool()) == Some(true) {
            return Err(bad("is a link to a local directory"));
        }
        match entry.get("resolved").and_then(|r| r.as_str()) {
            // Bundled packages come inside their parent's tarball.
            None if entry.get("inBundle").and_then(|b| b.as_bool()) == Some(true) => {}
            None => return Err(bad("has no \"resolved\" registry URL")),
            Some(url) => {
                let under_registry = url
                    .strip_prefix(registry)
                    .is_some_and(|rest| rest.starts_with('/') && !rest.contains(".."));
                if !under_registry {
                    return Err(bad(&format!(
                        "is resolved outside the registry {registry}/ ({})",
                        crate::contract::truncate(url, 120)
                    )));
                }
                if entry.get("integrity").and_then(|i| i.as_str()).is_none() {
                    return Err(bad("has no \"integrity\" hash"));
                }
            }
        }
    }
    Ok(())
}

/// The definition's `listed` dependencies and a manifest's, as one sorted
/// list without duplicates; the same package required two different ways is
/// a [`ManifestError::Conflict`].
pub fn merge(
    language: Language,
    listed: &[String],
    manifest: &[String],
) -> Result<Vec<String>, ManifestError> {
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for spec in listed.iter().chain(manifest) {
        let spec = spec.trim().to_string();
        let name = package_name(language, &spec);
        match by_name.get(&name) {
            Some(prior) if squeeze(prior) != squeeze(&spec) => {
                return Err(ManifestError::Conflict {
                    package: name,
                    first: prior.clone(),
                    second: spec,
                })
            }
            Some(_) => {}
            None => {
                by_name.insert(name, spec);
            }
        }
    }
    if by_name.len() > MAX_MERGED {
        return Err(ManifestError::TooMany);
    }
    Ok(by_name.into_values().collect())
}

/// A requirement without its spaces, in lowercase (`NumPy >= 1.26` is
/// `numpy>=1.26`: names and versions compare case-insensitively).
fn squeeze(spec: &str) -> String {
    spec.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_lines_comments_and_continuations() {
        let text = "# data\nnumpy==1.26.4  # pinned\n\npandas>=2,\\\n<3\njinja2 ; python_version >= \"3.8\"\n";
        assert_eq!(
            requirements_txt(text).unwrap(),
            vec![
                "numpy==1.26.4".to_string(),
                "pandas>=2,<3".into(),
                "jinja2 ; python_version >= \"3.8\"".into()
            ]
        );
    }

    #[test]
    fn requirements_refuse_options_and_urls() {
        for bad in [
            "-r other.txt",
            "--index-url https://evil/simple",
            "-e .",
            "numpy==1.0 --hash=sha256:00",
            "pkg @ https://evil/x.whl",
            "./local",
        ] {
            let err = requirements_txt(&format!("ok\n{bad}\n")).unwrap_err();
            assert!(
                err.to_string().starts_with("requirements.txt"),
                "{bad}: {err}"
            );
        }
        let err = requirements_txt("a\n-r b\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn package_json_takes_dependencies_not_dev() {
        let pj = br#"{"name":"x","dependencies":{"lodash":"^4.17.21","@img/a":"1.0.0"},
            "optionalDependencies":{"left-pad":""},"devDependencies":{"jest":"29"}}"#;
        let mut deps = package_json(pj).unwrap();
        deps.sort();
        assert_eq!(deps, vec!["@img/a@1.0.0", "left-pad", "lodash@^4.17.21"]);
        for bad in [
            &br#"{"dependencies":{"x":"git+https://github.com/a/b"}}"#[..],
            br#"{"dependencies":{"x":"file:../y"}}"#,
            br#"{"dependencies":{"x":"https://evil/x.tgz"}}"#,
            br#"{"dependencies":["x"]}"#,
            br#"[1]"#,
            b"not json",
        ] {
            assert!(
                package_json(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn lock_entries_come_from_the_registry() {
        let ok = br#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"a":"1"}},
            "node_modules/a":{"version":"1.0.0","resolved":"https://registry.npmjs.org/a/-/a-1.0.0.tgz","integrity":"sha512-x"},
            "node_modules/a/node_modules/b":{"version":"1.0.0","inBundle":true}}}"#;
        check_package_lock(ok, None).unwrap();
        let entry = |e: &str| {
            format!(r#"{{"lockfileVersion":3,"packages":{{"node_modules/a":{e}}}}}"#).into_bytes()
        };
        for bad in [
            r#"{"resolved":"https://evil.example/a.tgz","integrity":"sha512-x"}"#,
            r#"{"resolved":"https://registry.npmjs.org.evil/a.tgz","integrity":"sha512-x"}"#,
            r#"{"resolved":"git+ssh://git@github.com/a/b.git","integrity":"sha512-x"}"#,
            r#"{"resolved":"https://registry.npmjs.org/a/-/a-1.0.0.tgz"}"#,
            r#"{"resolved":"../x","link":true}"#,
            r#"{"version":"1.0.0"}"#,
        ] {
            assert!(check_package_lock(&entry(bad), None).is_err(), "{bad}");
        }
        let outside = br#"{"lockfileVersion":3,"packages":{"../../etc":{"resolved":"https://registry.npmjs.org/a","integrity":"x"}}}"#;
        assert!(check_package_lock(outside, None).is_err());
        // Found by the fuzzer: the root entry pointing somewhere.
        let root = br#"{"lockfileVersion":3,"packages":{"":{"resolved":"ht","integrity":"sh"}}}"#;
        assert!(check_package_lock(root, None).is_err());
        assert!(check_package_lock(br#"{"lockfileVersion":1,"dependencies":{}}"#, None).is_err());
        let mirror = br#"{"lockfileVersion":2,"packages":{"node_modules/a":{"resolved":"https://npm.corp/a/-/a-1.tgz","integrity":"sha1-x"}}}"#;
        check_package_lock(mirror, Some("https://npm.corp/")).unwrap();
        assert!(check_package_lock(mirror, None).is_err());
    }

    #[test]
    fn merge_dedups_and_finds_conflicts() {
        let merged = merge(
            Language::Python,
            &["NumPy >= 1.26".into(), "jinja2".into()],
            &["numpy>=1.26".into(), "pandas".into()],
        )
        .unwrap();
        assert_eq!(merged, vec!["jinja2", "NumPy >= 1.26", "pandas"]);
        let err = merge(Language::Python, &["numpy==1".into()], &["numpy==2".into()]).unwrap_err();
        assert!(matches!(err, ManifestError::Conflict { ref package, .. } if package == "numpy"));
        let err = merge(Language::Node, &["lodash@4".into()], &["lodash@^4".into()]).unwrap_err();
        assert!(err.to_string().contains("lodash"), "{err}");
    }
}
