//! Dependency specifiers: nothing accepted may name a path, a URL or an
//! installer option, for either installer.
#![no_main]

use faas_common::{deps, Language};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for spec in text.split('\n') {
        for language in [Language::Python, Language::Node] {
            if deps::validate(language, &[spec.to_string()]).is_ok() {
                assert!(!spec.starts_with('-'), "{spec:?}");
                assert!(!spec.contains(':'), "{spec:?}");
                assert!(!spec.contains('\\'), "{spec:?}");
                assert!(!spec.starts_with('.') && !spec.starts_with('/'), "{spec:?}");
                match language {
                    Language::Python => assert!(!spec.contains('/') && !spec.contains('@'), "{spec:?}"),
                    _ => assert!(
                        !spec.contains('/') || (spec.starts_with('@') && spec.matches('/').count() == 1),
                        "{spec:?}"
                    ),
                }
            }
        }
    }
});
