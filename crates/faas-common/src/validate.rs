//! Checks of a [`FunctionDefinition`] that need nothing but the definition:
//! names, handler syntax, environment, dependency specifiers, the static
//! ranges of limits. What depends on the node (its memory, its sandbox
//! kinds) and on the code (whether the handler is in it) is checked by the
//! orchestrator. Every message is one line and says what is allowed.

use std::collections::BTreeMap;

use crate::{FunctionDefinition, Language};

/// Memory a function may ask for, MiB (a node may allow less).
pub const MEMORY_RANGE_MB: std::ops::RangeInclusive<u32> = 32..=8192;
/// Ephemeral storage (`/tmp`) of a function that gives none, MiB (Lambda's default).
pub const DEFAULT_EPHEMERAL_MB: u32 = 512;
/// The node limit on `ephemeral_mb` when its operator sets none, MiB (Lambda's maximum).
pub const DEFAULT_MAX_EPHEMERAL_MB: u32 = 10_240;
/// [`DEFAULT_EPHEMERAL_MB`], for `#[serde(default = ...)]`: what records
/// written before functions had an `ephemeral_mb` read as.
pub fn default_ephemeral_mb() -> u32 {
    DEFAULT_EPHEMERAL_MB
}

/// Timeout a function may ask for, seconds.
pub const TIMEOUT_RANGE_SEC: std::ops::RangeInclusive<u32> = 1..=900;
/// Allowed `max_instances`.
pub const MAX_INSTANCES_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;
/// Most `min_instances` (provisioned instances cost memory at all times).
pub const MAX_MIN_INSTANCES: u32 = 100;
/// Allowed `idle_timeout_sec` (one day at most).
pub const IDLE_TIMEOUT_RANGE_SEC: std::ops::RangeInclusive<u32> = 1..=86_400;
/// Most `max_queue`.
pub const MAX_QUEUE: u32 = 10_000;
/// Most `max_retries` of asynchronous invocations.
pub const MAX_RETRIES: u32 = 10;
/// `max_retries` when a deploy gives none.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Most environment variables.
pub const MAX_ENV_VARS: usize = 100;
/// Most bytes of all environment names and values together.
pub const MAX_ENV_BYTES: usize = 32 * 1024;
/// Longest handler.
pub const MAX_HANDLER_LEN: usize = 256;

/// Why a definition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DefinitionError(pub String);

fn bad(msg: impl Into<String>) -> DefinitionError {
    DefinitionError(msg.into())
}

/// Check everything about `def` that needs only `def`; returns its language.
pub fn definition(def: &FunctionDefinition) -> Result<Language, DefinitionError> {
    function_name(&def.name)?;
    let language: Language = def
        .language
        .parse()
        .map_err(|e: crate::UnknownLanguage| bad(e.to_string()))?;
    handler(language, def.handler.trim())?;
    if let Some(m) = def.memory_mb {
        if !MEMORY_RANGE_MB.contains(&m) {
            return Err(bad(format!(
                "memory_mb must be between {} and {}",
                MEMORY_RANGE_MB.start(),
                MEMORY_RANGE_MB.end()
            )));
        }
    }
    if def.ephemeral_mb == Some(0) {
        // The upper bound is the node's (`max_ephemeral_mb`), checked at deploy.
        return Err(bad("ephemeral_mb must be at least 1"));
    }
    if let Some(t) = def.timeout_sec {
        if !TIMEOUT_RANGE_SEC.contains(&t) {
            return Err(bad(format!(
                "timeout_sec must be between {} and {}",
                TIMEOUT_RANGE_SEC.start(),
                TIMEOUT_RANGE_SEC.end()
            )));
        }
    }
    if let Some(s) = &def.scaling {
        scaling(s)?;
    }
    if def.max_retries.is_some_and(|r| r > MAX_RETRIES) {
        return Err(bad(format!("max_retries must be at most {MAX_RETRIES}")));
    }
    env(&def.env)?;
    if let Some(network) = &def.network {
        crate::network::parse_egress(network).map_err(|e| bad(e.to_string()))?;
    }
    if !def.dependencies.is_empty() {
        crate::deps::validate(language, &def.dependencies).map_err(|e| bad(e.to_string()))?;
    }
    Ok(language)
}

/// 1-64 of `A-Z a-z 0-9 - _ .`, not starting with `.` or `fn-` (ids look so).
pub fn function_name(name: &str) -> Result<(), DefinitionError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.starts_with("fn-")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "invalid function name {:?}: use 1-64 of A-Z a-z 0-9 - _ . (not starting with '.' or 'fn-')",
            crate::contract::truncate(name, 80)
        )))
    }
}

/// `module.function` for Python and Node.js; a relative path for shell and
/// native executables.
pub fn handler(language: Language, handler: &str) -> Result<(), DefinitionError> {
    if handler.is_empty() {
        return Err(bad("handler is required"));
    }
    if handler.len() > MAX_HANDLER_LEN {
        return Err(bad(format!(
            "handler is longer than {MAX_HANDLER_LEN} bytes"
        )));
    }
    match language {
        Language::Python | Language::Node => split_handler(handler).map(|_| ()),
        Language::Shell | Language::Native => {
            let ok = !handler.starts_with('/')
                && handler
                    .split('/')
                    .all(|c| !c.is_empty() && c != ".." && !c.contains(['\0', '\\']));
            if ok {
                Ok(())
            } else {
                Err(bad(format!(
                    "handler {handler:?} must be a relative path inside the code"
                )))
            }
        }
    }
}

/// `pkg.module.func` -> (`pkg.module`, `func`).
pub fn split_handler(handler: &str) -> Result<(&str, &str), DefinitionError> {
    let malformed = || {
        bad(format!(
            "handler {:?} must look like module.function",
            crate::contract::truncate(handler, 80)
        ))
    };
    let (module, func) = handler.rsplit_once('.').ok_or_else(malformed)?;
    let ident = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    if !module.split('.').all(ident) || !ident(func) {
        return Err(malformed());
    }
    Ok((module, func))
}

/// Check a function's scaling: ranges, and `min_instances <= max_instances`.
pub fn scaling(s: &crate::Scaling) -> Result<(), DefinitionError> {
    if let Some(max) = s.max_instances {
        if !MAX_INSTANCES_RANGE.contains(&max) {
            return Err(bad(format!(
                "scaling.max_instances must be between {} and {}",
                MAX_INSTANCES_RANGE.start(),
                MAX_INSTANCES_RANGE.end()
            )));
        }
    }
    if let Some(min) = s.min_instances {
        if min > MAX_MIN_INSTANCES {
            return Err(bad(format!(
                "scaling.min_instances must be at most {MAX_MIN_INSTANCES}"
            )));
        }
        if s.max_instances.is_some_and(|max| min > max) {
            return Err(bad("scaling.min_instances must not exceed max_instances"));
        }
    }
    if s.concurrency.is_some_and(|c| c != 1) {
        return Err(bad(
            "scaling.concurrency must be 1: an instance runs one invocation at a time \
             (raise max_instances for more at once)",
        ));
    }
    if let Some(t) = s.idle_timeout_sec {
        if !IDLE_TIMEOUT_RANGE_SEC.contains(&t) {
            return Err(bad(format!(
                "scaling.idle_timeout_sec must be between {} and {}",
                IDLE_TIMEOUT_RANGE_SEC.start(),
                IDLE_TIMEOUT_RANGE_SEC.end()
            )));
        }
    }
    if s.max_queue.is_some_and(|q| q > MAX_QUEUE) {
        return Err(bad(format!(
            "scaling.max_queue must be at most {MAX_QUEUE}"
        )));
    }
    Ok(())
}

/// Names of letters, digits and `_` (not starting with a digit); values
/// without NUL; bounded in count and size.
pub fn env(vars: &BTreeMap<String, String>) -> Result<(), DefinitionError> {
    if vars.len() > MAX_ENV_VARS {
        return Err(bad(format!("at most {MAX_ENV_VARS} environment variables")));
    }
    let total: usize = vars.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ENV_BYTES {
        return Err(bad(format!(
            "environment variables exceed {MAX_ENV_BYTES} bytes in all"
        )));
    }
    for (k, v) in vars {
        env_var(k, v)?;
    }
    Ok(())
}

/// One environment variable.
pub fn env_var(key: &str, value: &str) -> Result<(), DefinitionError> {
    let ok_key = !key.is_empty()
        && key.len() <= 128
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok_key {
        return Err(bad(format!(
            "invalid environment variable name {:?}",
            crate::contract::truncate(key, 80)
        )));
    }
    if value.contains('\0') {
        return Err(bad(format!(
            "environment variable {key} contains a NUL byte"
        )));
    }
    if value.len() > MAX_ENV_BYTES {
        return Err(bad(format!(
            "environment variable {key} is longer than {MAX_ENV_BYTES} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["hello", "a.b-c_d", "X1"] {
            function_name(good).unwrap();
        }
        for bad in [
            "",
            "a/b",
            ".hidden",
            "fn-123",
            "with space",
            &"x".repeat(65),
        ] {
            assert!(function_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn handlers() {
        assert!(split_handler("handler").is_err());
        assert!(split_handler("a/b.c").is_err());
        assert!(split_handler("pkg.mod.fn").is_ok());
        handler(Language::Shell, "run.sh").unwrap();
        handler(Language::Shell, "bin/run").unwrap();
        handler(Language::Shell, "./run.sh").unwrap();
        for bad in ["/bin/sh", "../x", "a/../../x", "a//b", ""] {
            assert!(handler(Language::Native, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn environment_is_bounded() {
        let many: BTreeMap<String, String> = (0..=MAX_ENV_VARS)
            .map(|i| (format!("K{i}"), "v".into()))
            .collect();
        assert!(env(&many).is_err());
        let big = BTreeMap::from([("K".to_string(), "v".repeat(MAX_ENV_BYTES + 1))]);
        assert!(env(&big).is_err());
        assert!(env_var("1X", "v").is_err());
        assert!(env_var("X", "a\0b").is_err());
        env_var("GOOD_1", "value").unwrap();
    }

    #[test]
    fn definitions() {
        let def = FunctionDefinition {
            name: "f".into(),
            language: "python".into(),
            handler: "main.handler".into(),
            ..Default::default()
        };
        assert_eq!(definition(&def), Ok(Language::Python));
        let bad_memory = FunctionDefinition {
            memory_mb: Some(1 << 20),
            ..def.clone()
        };
        assert!(definition(&bad_memory).is_err());
        let no_tmp = FunctionDefinition {
            ephemeral_mb: Some(0),
            ..def.clone()
        };
        assert!(definition(&no_tmp).is_err());
        let large_tmp = FunctionDefinition {
            // The node's limit decides (at deploy), not the definition.
            ephemeral_mb: Some(100_000),
            ..def.clone()
        };
        assert!(definition(&large_tmp).is_ok());
        let bad_dep = FunctionDefinition {
            dependencies: vec!["git+https://x/y".into()],
            ..def
        };
        assert!(definition(&bad_dep).is_err());
    }
}
