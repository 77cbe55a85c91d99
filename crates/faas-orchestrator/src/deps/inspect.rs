//! What an installer left in a layer: the resolved package set that names it,
//! and Node.js packages that cannot work without the install scripts we never
//! run. The layer was written by the installer, so it is read as hostile:
//! no link is followed, and every file read and the walk itself are bounded.

use std::io::Read;
use std::path::Path;

use faas_common::Language;

/// Most packages a layer may hold.
const MAX_PACKAGES: usize = 20_000;
/// Largest `package.json` read.
const MAX_PACKAGE_JSON: u64 = 1024 * 1024;
/// Tools whose install script builds or downloads a native addon.
const ADDON_TOOLS: &[&str] = &[
    "node-gyp",
    "prebuild-install",
    "node-pre-gyp",
    "cmake-js",
    "node-gyp-build",
];

/// Every installed package as `name==version` (Python) or
/// `path@version` (Node.js), sorted; an error names the packages that need
/// an install script and says why.
pub(super) fn layer(language: Language, root: &Path) -> Result<Vec<String>, String> {
    let mut found = match language {
        Language::Python => python(root)?,
        Language::Node => node(root)?,
        Language::Shell | Language::Native => Vec::new(),
    };
    found.sort();
    Ok(found)
}

fn python(root: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| format!("read the layer: {e}"))? {
        let name = entry
            .map_err(|e| format!("read the layer: {e}"))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(dist) = name.strip_suffix(".dist-info") {
            // `{name}-{version}`; names cannot contain '-' here (wheels escape it).
            if let Some((pkg, version)) = dist.split_once('-') {
                out.push(format!(
                    "{}=={version}",
                    pkg.to_ascii_lowercase().replace(['_', '.'], "-")
                ));
            }
        }
        if out.len() > MAX_PACKAGES {
            return Err(format!("more than {MAX_PACKAGES} packages installed"));
        }
    }
    Ok(out)
}

fn node(root: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut refused = Vec::new();
    let mut stack = vec![root.join("node_modules")];
    while let Some(modules) = stack.pop() {
        if !is_real_dir(&modules) {
            continue;
        }
        let mut packages = Vec::new();
        for entry in std::fs::read_dir(&modules).map_err(|e| format!("read the layer: {e}"))? {
            let entry = entry.map_err(|e| format!("read the layer: {e}"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if name.starts_with('@') && is_real_dir(&entry.path()) {
                for scoped in
                    std::fs::read_dir(entry.path()).map_err(|e| format!("read the layer: {e}"))?
                {
                    packages.push(scoped.map_err(|e| format!("read the layer: {e}"))?.path());
                }
            } else {
                packages.push(entry.path());
            }
        }
        for dir in packages {
            if !is_real_dir(&dir) {
                continue;
            }
            let Some(manifest) = read_package_json(&dir) else {
                continue;
            };
            let rel = dir.strip_prefix(root).unwrap_or(&dir).to_string_lossy();
            let version = manifest
                .get("version")
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            let id = format!("{rel}@{version}");
            if let Some(script) = needed_script(&dir, &manifest) {
                let name = manifest.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                refused.push(format!(
                    "{name}@{version} ({})",
                    faas_common::contract::truncate(&script, 80)
                ));
            }
            out.push(id);
            if out.len() > MAX_PACKAGES {
                return Err(format!("more than {MAX_PACKAGES} packages installed"));
            }
            stack.push(dir.join("node_modules"));
        }
    }
    if !refused.is_empty() {
        refused.sort();
        let more = refused.len().saturating_sub(5);
        refused.truncate(5);
        return Err(format!(
            "{} {} a native addon with {}, and install scripts never run \
             here: use a version that ships prebuilt linux-x64 binaries, or a \
             pure-JavaScript alternative{}",
            refused.join(", "),
            if refused.len() == 1 {
                "builds or downloads"
            } else {
                "build or download"
            },
            if refused.len() == 1 {
                "its install script"
            } else {
                "their install scripts"
            },
            if more > 0 {
                format!(" ({more} more)")
            } else {
                String::new()
            }
        ));
    }
    Ok(out)
}

/// The install-time step a package cannot work without, if any: a
/// `binding.gyp` (npm runs `node-gyp rebuild` for it) or an install script
/// that runs an addon tool, when no compiled addon for Linux came with it.
fn needed_script(dir: &Path, manifest: &serde_json::Value) -> Option<String> {
    let scripts = manifest.get("scripts");
    let script = ["preinstall", "install", "postinstall"]
        .iter()
        .find_map(|k| scripts.and_then(|s| s.get(k)).and_then(|v| v.as_str()));
    let gyp = is_real_file(&dir.join("binding.gyp"))
        || manifest.get("gypfile").and_then(|g| g.as_bool()) == Some(true);
    let addon_tool = script.filter(|s| ADDON_TOOLS.iter().any(|t| s.contains(t)));
    if !gyp && addon_tool.is_none() {
        return None;
    }
    if has_linux_addon(dir) {
        return None;
    }
    Some(
        addon_tool
            .map(str::to_string)
            .unwrap_or_else(|| "node-gyp rebuild".into()),
    )
}

/// A compiled addon where loaders look: `build/Release/*.node`, or
/// `prebuilds/linux-x64*/**.node`.
fn has_linux_addon(dir: &Path) -> bool {
    let has_node_file = |d: &Path| {
        std::fs::read_dir(d).is_ok_and(|entries| {
            entries.flatten().take(1000).any(|e| {
                e.file_name().to_string_lossy().ends_with(".node") && is_real_file(&e.path())
            })
        })
    };
    if has_node_file(&dir.join("build/Release")) {
        return true;
    }
    let Ok(prebuilds) = std::fs::read_dir(dir.join("prebuilds")) else {
        return false;
    };
    prebuilds.flatten().take(100).any(|e| {
        e.file_name().to_string_lossy().starts_with("linux-x64")
            && is_real_dir(&e.path())
            && has_node_file(&e.path())
    })
}

fn read_package_json(dir: &Path) -> Option<serde_json::Value> {
    let path = dir.join("package.json");
    if !is_real_file(&path) {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .ok()?
        .take(MAX_PACKAGE_JSON)
        .read_to_end(&mut bytes)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn is_real_file(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(root: &Path, rel: &str, json: &str) {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("package.json"), json).unwrap();
    }

    #[test]
    fn python_set_from_dist_info() {
        let d = tempfile::tempdir().unwrap();
        for n in ["numpy-1.26.4.dist-info", "Jinja2-3.1.4.dist-info", "numpy"] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        assert_eq!(
            layer(Language::Python, d.path()).unwrap(),
            vec!["jinja2==3.1.4", "numpy==1.26.4"]
        );
    }

    #[test]
    fn node_set_and_addons_that_need_scripts() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        package(
            root,
            "node_modules/lodash",
            r#"{"name":"lodash","version":"4.17.21"}"#,
        );
        package(
            root,
            "node_modules/@img/sharp",
            r#"{"name":"@img/sharp","version":"1.0.0","scripts":{"install":"node check.js"}}"#,
        );
        package(
            root,
            "node_modules/lodash/node_modules/x",
            r#"{"name":"x","version":"2.0.0"}"#,
        );
        package(
            root,
            "node_modules/prebuilt",
            r#"{"name":"prebuilt","version":"1.0.0","scripts":{"install":"node-gyp-build"}}"#,
        );
        std::fs::create_dir_all(root.join("node_modules/prebuilt/prebuilds/linux-x64")).unwrap();
        std::fs::write(
            root.join("node_modules/prebuilt/prebuilds/linux-x64/a.node"),
            "",
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc", root.join("node_modules/evil")).unwrap();
        assert_eq!(
            layer(Language::Node, root).unwrap(),
            vec![
                "node_modules/@img/sharp@1.0.0",
                "node_modules/lodash/node_modules/x@2.0.0",
                "node_modules/lodash@4.17.21",
                "node_modules/prebuilt@1.0.0",
            ]
        );
        package(
            root,
            "node_modules/bcrypt",
            r#"{"name":"bcrypt","version":"5.1.1","scripts":{"install":"node-pre-gyp install --fallback-to-build"}}"#,
        );
        package(
            root,
            "node_modules/gyp",
            r#"{"name":"gyp","version":"1.0.0"}"#,
        );
        std::fs::write(root.join("node_modules/gyp/binding.gyp"), "{}").unwrap();
        let err = layer(Language::Node, root).unwrap_err();
        assert!(err.contains("bcrypt@5.1.1 (node-pre-gyp install"), "{err}");
        assert!(err.contains("gyp@1.0.0 (node-gyp rebuild)"), "{err}");
        assert!(
            !err.contains("prebuilt@") && !err.contains("sharp@"),
            "{err}"
        );
    }
}
