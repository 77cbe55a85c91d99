//! Dependency specifiers a function may declare: registry requirements only.
//!
//! An installer given anything else fetches or builds it: pip installs local
//! paths, direct URLs (`name @ https://...`) and VCS URLs by running their
//! build backends; npm installs `file:`, `git+ssh:`, `github:` and tarball
//! paths. So only the registry forms are accepted, and the check is purely
//! syntactic: the answer never depends on what exists on the host.
//!
//! - Python (PEP 508 without URLs): `name[extra,...] <specifiers> ; <marker>`,
//!   for example `requests`, `numpy>=1.26,<2`, `uvicorn[standard]==0.30.*`,
//!   `tomli ; python_version < "3.11"`.
//! - Node.js: `name` or `name@range` (scoped `@scope/name@range`), where the
//!   range is a semver range or a dist-tag: `left-pad@1.3.0`, `lodash@^4`,
//!   `@types/node@20.x`, `react@latest`.

use crate::Language;

/// Longest specifier accepted.
pub const MAX_SPEC_LEN: usize = 200;

/// Most dependencies one function may declare.
pub const MAX_DEPENDENCIES: usize = 100;

/// Why a specifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DependencyError {
    /// The language has no package installer.
    #[error("{0} functions cannot declare dependencies")]
    NoInstaller(Language),
    /// More than the limit (for a definition's list, [`MAX_DEPENDENCIES`]).
    #[error("at most {0} dependencies")]
    TooMany(usize),
    /// Not a registry requirement.
    #[error("dependency {spec:?} is not a registry requirement: {why} (expected {expected})")]
    Invalid {
        /// The specifier as given.
        spec: String,
        /// What is wrong with it.
        why: &'static str,
        /// The accepted form.
        expected: &'static str,
    },
}

const PYTHON_FORM: &str = "name[extras] followed by version specifiers, e.g. numpy>=1.26,<2";
const NODE_FORM: &str = "name or name@range, e.g. lodash@^4.17.0";

/// File name endings that make pip or npm read a local file instead of the registry.
const ARCHIVE_SUFFIXES: &[&str] = &[
    ".whl",
    ".zip",
    ".tar",
    ".tgz",
    ".tar.gz",
    ".tbz",
    ".tar.bz2",
    ".txz",
    ".tar.xz",
    ".tlz",
    ".tar.lz",
    ".tar.lzma",
];

/// Check every specifier of a function's dependency list.
pub fn validate(language: Language, specs: &[String]) -> Result<(), DependencyError> {
    validate_count(language, specs, MAX_DEPENDENCIES)
}

/// Check every specifier, and that there are at most `max`.
pub fn validate_count(
    language: Language,
    specs: &[String],
    max: usize,
) -> Result<(), DependencyError> {
    if language.is_process_per_call() {
        return Err(DependencyError::NoInstaller(language));
    }
    if specs.len() > max {
        return Err(DependencyError::TooMany(max));
    }
    for spec in specs {
        match language {
            Language::Python => python(spec)?,
            Language::Node => node(spec)?,
            Language::Shell | Language::Native => unreachable!("checked above"),
        }
    }
    Ok(())
}

/// The package name a valid specifier installs (lowercase; Python names with
/// `-`, `_` and `.` folded to `-`, as PyPI compares them).
pub fn package_name(language: Language, spec: &str) -> String {
    match language {
        Language::Python => {
            let end = spec
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
                .unwrap_or(spec.len());
            spec[..end].to_ascii_lowercase().replace(['_', '.'], "-")
        }
        _ => {
            let at = spec[1..].find('@').map_or(spec.len(), |i| i + 1);
            spec[..at].to_ascii_lowercase()
        }
    }
}

fn invalid(spec: &str, why: &'static str, expected: &'static str) -> DependencyError {
    DependencyError::Invalid {
        spec: spec.to_string(),
        why,
        expected,
    }
}

fn common(spec: &str, expected: &'static str) -> Result<(), DependencyError> {
    if spec.is_empty() {
        return Err(invalid(spec, "it is empty", expected));
    }
    if spec.len() > MAX_SPEC_LEN {
        return Err(invalid(spec, "it is too long", expected));
    }
    if !spec.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(invalid(
            spec,
            "only printable ASCII and spaces are allowed",
            expected,
        ));
    }
    if spec.starts_with('-') {
        return Err(invalid(
            spec,
            "it would be read as an installer option",
            expected,
        ));
    }
    if spec.contains('/') && !spec.starts_with('@') || spec.contains('\\') || spec.contains(':') {
        return Err(invalid(spec, "paths and URLs are not allowed", expected));
    }
    Ok(())
}

fn python(spec: &str) -> Result<(), DependencyError> {
    let bad = |why| invalid(spec, why, PYTHON_FORM);
    common(spec, PYTHON_FORM)?;
    if spec.contains('@') || spec.contains('/') {
        return Err(bad("paths and URLs are not allowed"));
    }
    let (requirement, marker) = match spec.split_once(';') {
        Some((r, m)) => (r, Some(m)),
        None => (spec, None),
    };
    let mut rest = requirement.trim();
    let name_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .unwrap_or(rest.len());
    let name = &rest[..name_len];
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(name.chars().next()) || !edge_ok(name.chars().next_back()) {
        return Err(bad("it does not start with a package name"));
    }
    if ARCHIVE_SUFFIXES
        .iter()
        .any(|s| name.to_ascii_lowercase().ends_with(s))
    {
        return Err(bad("it names an archive file"));
    }
    rest = rest[name_len..].trim_start();
    if let Some(after) = rest.strip_prefix('[') {
        let (extras, tail) = after
            .split_once(']')
            .ok_or_else(|| bad("unclosed [extras]"))?;
        for extra in extras.split(',') {
            let extra = extra.trim();
            if extra.is_empty()
                || !extra
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(bad("invalid extra name"));
            }
        }
        rest = tail.trim_start();
    }
    if !rest.is_empty() {
        for clause in rest.split(',') {
            version_clause(clause.trim()).ok_or_else(|| bad("invalid version specifier"))?;
        }
    }
    if let Some(marker) = marker {
        marker_ok(marker).ok_or_else(|| bad("invalid environment marker"))?;
    }
    Ok(())
}

/// Variables and keywords of PEP 508 environment markers.
const MARKER_WORDS: &[&str] = &[
    "python_version",
    "python_full_version",
    "os_name",
    "sys_platform",
    "platform_release",
    "platform_system",
    "platform_version",
    "platform_machine",
    "platform_python_implementation",
    "implementation_name",
    "implementation_version",
    "extra",
    "and",
    "or",
    "in",
    "not",
];

/// An environment marker: known variables, comparison operators, parentheses
/// and quoted literals, nothing else.
fn marker_ok(marker: &str) -> Option<()> {
    let mut chars = marker.char_indices().peekable();
    let mut tokens = 0;
    while let Some((start, c)) = chars.next() {
        match c {
            ' ' | '(' | ')' | '<' | '>' | '=' | '!' | '~' => {}
            '"' | '\'' => {
                let mut closed = false;
                for (_, d) in chars.by_ref() {
                    if d == c {
                        closed = true;
                        break;
                    }
                    if !(d.is_ascii_alphanumeric()
                        || matches!(d, ' ' | '.' | '_' | '-' | '*' | '+'))
                    {
                        return None;
                    }
                }
                closed.then_some(())?;
                tokens += 1;
            }
            c if c.is_ascii_lowercase() || c == '_' => {
                let mut end = start + 1;
                while let Some(&(i, d)) = chars.peek() {
                    if !(d.is_ascii_lowercase() || d == '_') {
                        break;
                    }
                    end = i + 1;
                    chars.next();
                }
                MARKER_WORDS.contains(&&marker[start..end]).then_some(())?;
                tokens += 1;
            }
            _ => return None,
        }
    }
    (tokens > 0).then_some(())
}

/// `>=1.2`, `==1.*`, `~=2.0`, `!=1.5.1`, `===1.0+local`.
fn version_clause(clause: &str) -> Option<()> {
    const OPS: [&str; 8] = ["===", "==", "!=", "<=", ">=", "~=", "<", ">"];
    let op = OPS.iter().find(|op| clause.starts_with(**op))?;
    let version = clause[op.len()..].trim();
    let ok = !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '-' | '_'));
    ok.then_some(())
}

fn node(spec: &str) -> Result<(), DependencyError> {
    let bad = |why| invalid(spec, why, NODE_FORM);
    common(spec, NODE_FORM)?;
    // A scoped name has its own leading '@': the range starts at the next one.
    let (name, range) = match spec[1..].find('@') {
        Some(i) => (&spec[..i + 1], Some(&spec[i + 2..])),
        None => (spec, None),
    };
    let (scope, bare) = match name.strip_prefix('@') {
        Some(scoped) => {
            let (scope, bare) = scoped
                .split_once('/')
                .ok_or_else(|| bad("a scoped name is @scope/name"))?;
            (Some(scope), bare)
        }
        None => (None, name),
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 214
            && !p.starts_with(['.', '_', '~'])
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'))
    };
    if !part_ok(bare) || scope.is_some_and(|s| !part_ok(s)) {
        return Err(bad("invalid package name"));
    }
    if ARCHIVE_SUFFIXES
        .iter()
        .any(|s| bare.to_ascii_lowercase().ends_with(s))
    {
        return Err(bad("it names an archive file"));
    }
    if let Some(range) = range {
        let ok = !range.trim().is_empty()
            && range.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(
                        c,
                        ' ' | '.' | '*' | '^' | '~' | '<' | '>' | '=' | '|' | '-' | '+'
                    )
            });
        if !ok {
            return Err(bad("invalid version range"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(spec: &str) -> Result<(), DependencyError> {
        validate(Language::Python, &[spec.to_string()])
    }

    fn js(spec: &str) -> Result<(), DependencyError> {
        validate(Language::Node, &[spec.to_string()])
    }

    #[test]
    fn python_registry_requirements_pass() {
        for ok in [
            "requests",
            "numpy>=1.26,<2",
            "numpy >= 1.26, < 2",
            "uvicorn[standard]==0.30.*",
            "zope.interface~=6.0",
            "Pillow!=10.0.0",
            "pkg===1.0+local",
            "tomli ; python_version < \"3.11\"",
            "a",
        ] {
            py(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn python_paths_urls_and_options_are_refused() {
        for bad in [
            "",
            "-e .",
            "--index-url=http://evil",
            "./local",
            "/etc/passwd",
            "../x",
            "pkg @ https://evil.example/pkg.tar.gz",
            "pkg@https://evil.example/pkg.tar.gz",
            "git+https://github.com/x/y",
            "https://evil.example/x.whl",
            "file:///etc/passwd",
            "x.whl",
            "evil.tar.gz",
            "C:\\x",
            "pkg[",
            "pkg>=",
            "pkg ; os.system('x')",
            "pkg\n--index-url",
            "pkg\tx",
            "_private",
        ] {
            assert!(py(bad).is_err(), "{bad:?} accepted");
        }
        // The answer is the same whether or not the path exists on the host.
        let a = py("/etc/passwd").unwrap_err().to_string();
        let b = py("/does/not/exist").unwrap_err().to_string();
        assert_eq!(
            a.replace("/etc/passwd", "P"),
            b.replace("/does/not/exist", "P")
        );
    }

    #[test]
    fn node_registry_requirements_pass() {
        for ok in [
            "left-pad",
            "left-pad@1.3.0",
            "lodash@^4.17.0",
            "@types/node@20.x",
            "@scope/pkg",
            "react@latest",
            "x@>=1.0.0 <2.0.0",
            "y@1 || 2",
        ] {
            js(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn node_paths_urls_and_aliases_are_refused() {
        for bad in [
            "file:../x",
            "../x",
            "./x",
            "~/x",
            "/abs",
            "user/repo",
            "github:user/repo",
            "git+ssh://git@github.com/x/y.git",
            "http://evil/x.tgz",
            "x.tgz",
            "pkg@npm:other@1",
            "pkg@file:../x",
            "pkg@user/repo",
            "pkg@git+https://x",
            "@scope",
            "@/x",
            "--registry=http://evil",
            ".hidden",
        ] {
            assert!(js(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn limits_and_languages() {
        assert_eq!(
            validate(Language::Shell, &["x".into()]),
            Err(DependencyError::NoInstaller(Language::Shell))
        );
        let many = vec!["x".to_string(); MAX_DEPENDENCIES + 1];
        assert_eq!(
            validate(Language::Python, &many),
            Err(DependencyError::TooMany(MAX_DEPENDENCIES))
        );
        assert!(py(&"a".repeat(MAX_SPEC_LEN + 1)).is_err());
    }

    #[test]
    fn package_names() {
        assert_eq!(
            package_name(Language::Python, "Zope.Interface>=1"),
            "zope-interface"
        );
        assert_eq!(
            package_name(Language::Node, "@types/node@20"),
            "@types/node"
        );
        assert_eq!(package_name(Language::Node, "lodash@^4"), "lodash");
    }
}
