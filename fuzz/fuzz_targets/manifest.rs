//! Manifests: whatever a requirements.txt, package.json or package-lock.json
//! holds, what is accepted names registry packages only, and a lock that
//! passes points nowhere but the registry.
#![no_main]

use faas_common::{deps, manifest, Language};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(reqs) = manifest::requirements_txt(text) {
            assert!(deps::validate_count(Language::Python, &reqs, manifest::MAX_MERGED).is_ok());
            assert!(reqs.iter().all(|r| !r.starts_with('-') && !r.contains(" -")), "{reqs:?}");
        }
    }
    if let Ok(specs) = manifest::package_json(data) {
        assert!(deps::validate_count(Language::Node, &specs, manifest::MAX_MERGED).is_ok());
    }
    if manifest::check_package_lock(data, None).is_ok() {
        let doc: serde_json::Value = serde_json::from_slice(data).expect("checked JSON");
        for (path, entry) in doc["packages"].as_object().expect("checked packages") {
            if let Some(url) = entry.get("resolved").and_then(|r| r.as_str()) {
                assert!(url.starts_with("https://registry.npmjs.org/"), "{path}: {url}");
                assert!(!url.contains(".."), "{path}: {url}");
            }
            assert!(path.is_empty() || path.starts_with("node_modules/"), "{path}");
        }
    }
});
