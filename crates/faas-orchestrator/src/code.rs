//! Function code: decoding what the user sent (zip, tar.gz, one file, or a map
//! of files) into a validated [`CodeTree`] ([`faas_archive`] does the hard
//! part: nothing can name a place outside the tree), and checking that the
//! handler is in it.
//!
//! Nothing touches the disk until the whole upload has been validated in memory,
//! so a rejected deploy leaves nothing behind.

use std::collections::BTreeMap;

use base64::Engine;
use faas_archive::{ArchiveError, CodeTree, Limits};
use faas_common::Language;

use crate::OrchestratorError;

/// Decode the deploy request's `code_base64` / `files`.
pub fn from_request(
    code_base64: Option<&str>,
    files: Option<&BTreeMap<String, String>>,
    language: Language,
    handler: &str,
    limits: Limits,
) -> Result<CodeTree, OrchestratorError> {
    let tree = match (code_base64, files) {
        (Some(_), Some(_)) => return Err(bad("give either code_base64 or files, not both")),
        (None, None) => return Err(bad("code_base64 or files is required")),
        (None, Some(files)) => {
            if files.is_empty() {
                return Err(bad("files must not be empty"));
            }
            CodeTree::from_files(files.iter().map(|(k, v)| (k.as_str(), v.as_str())), limits)
        }
        (Some(b64), None) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| bad(format!("code_base64 is not valid base64: {e}")))?;
            if bytes.is_empty() {
                return Err(bad("code_base64 is empty"));
            }
            match CodeTree::decode_archive(&bytes, limits) {
                Some(tree) => tree,
                None => {
                    let name = single_file_name(language, handler)?;
                    CodeTree::single_file(&name, bytes, language.is_process_per_call(), limits)
                }
            }
        }
    };
    tree.map_err(archive_error)
}

/// The orchestrator's view of an archive error.
pub fn archive_error(e: ArchiveError) -> OrchestratorError {
    match e {
        ArchiveError::Invalid(m) => OrchestratorError::Invalid(m),
        ArchiveError::TooLarge(m) => OrchestratorError::TooLarge(m),
        ArchiveError::Io { .. } => OrchestratorError::Internal(e.to_string()),
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
    faas_common::validate::split_handler(handler).map_err(|e| bad(e.0))
}

/// Check that the handler exists in the tree; returns nothing, errs with a clear reason.
pub fn check_handler(
    tree: &CodeTree,
    language: Language,
    handler: &str,
) -> Result<(), OrchestratorError> {
    match language {
        Language::Shell | Language::Native => {
            let path = handler.trim_start_matches("./");
            if tree.file(path).is_none() {
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

fn bad(msg: impl Into<String>) -> OrchestratorError {
    OrchestratorError::Invalid(msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn single_file_takes_the_module_name() {
        let t = from_request(
            Some(&b64(b"def handler(e, c):\n  return e\n")),
            None,
            Language::Python,
            "main.handler",
            Limits::default(),
        )
        .unwrap();
        assert!(t.file("main.py").is_some());
        check_handler(&t, Language::Python, "main.handler").unwrap();
        assert!(check_handler(&t, Language::Python, "main.other").is_err());
        assert!(check_handler(&t, Language::Python, "nope.handler").is_err());
    }

    #[test]
    fn files_map_and_conflicts() {
        let files = BTreeMap::from([(
            "index.js".to_string(),
            "exports.handler = async () => 1".to_string(),
        )]);
        let t = from_request(
            None,
            Some(&files),
            Language::Node,
            "index.handler",
            Limits::default(),
        )
        .unwrap();
        check_handler(&t, Language::Node, "index.handler").unwrap();
        for (b64, files) in [
            (Some("aGk="), Some(&files)),
            (None, None),
            (Some("!!!"), None),
        ] {
            let err = from_request(
                b64,
                files,
                Language::Node,
                "index.handler",
                Limits::default(),
            )
            .unwrap_err();
            assert!(matches!(err, OrchestratorError::Invalid(_)), "{err}");
        }
        let escaping = BTreeMap::from([("../x.js".to_string(), "x".to_string())]);
        assert!(from_request(
            None,
            Some(&escaping),
            Language::Node,
            "x.handler",
            Limits::default()
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
