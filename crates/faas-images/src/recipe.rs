//! What goes into each image, and the content hashes that name the cache entries.

use faas_common::Language;
use sha2::{Digest, Sha256};

use crate::ImageKind;

/// Bump to rebuild every base tarball (anything about the mmdebstrap invocation
/// that is not captured by the other hashed fields changed).
pub(crate) const RECIPE_VERSION: u32 = 1;

/// Bump to rebuild every final image without rebuilding the bases (the layout
/// written on top of the base changed: directories, modes, extra files).
pub(crate) const LAYOUT_VERSION: u32 = 4;

/// The Debian release every image is built from.
pub(crate) const SUITE: &str = "bookworm";

/// mmdebstrap variant: only `Essential: yes` packages plus the includes.
pub(crate) const VARIANT: &str = "essential";

/// Hook directory shipped with mmdebstrap that sets up merged-/usr with
/// symlinks and installs `usr-is-merged`, instead of letting apt pick
/// `usrmerge`, which drags in Perl (about 50 MiB).
pub(crate) const MERGED_USR_HOOK: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

/// dpkg options keeping documentation, man pages, info pages and translations
/// out of the image (copyright files stay, as Debian licences require).
pub(crate) const DPKG_OPTIONS: [&str; 5] = [
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
];

/// The language bootstraps installed under `/opt/faas/bootstrap/` in every image.
pub(crate) const BOOTSTRAPS: [(&str, &str); 2] = [
    (
        "python.py",
        include_str!("../../faas-guest-agent/bootstrap/python.py"),
    ),
    (
        "node.js",
        include_str!("../../faas-guest-agent/bootstrap/node.js"),
    ),
];

/// Number of hex digits of a hash used in file and directory names.
pub(crate) const SHORT_HASH_LEN: usize = 16;

/// The system libraries that binary packages may link against instead of
/// bundling: manylinux wheels (PEP 599/600 allow libstdc++ and libgcc_s; libgomp
/// and zlib are taken from the system in practice) and prebuilt Node.js addons
/// (sharp's libvips needs libstdc++ and libgcc_s). Without libstdc++ numpy,
/// python-igraph or contourpy fail to import. The X11, GL and glib libraries the
/// policy also allows are left out: no wheel or addon we test needs them and
/// they cost tens of MiB (docs/architecture.md, "Runtime images").
pub(crate) const NATIVE_LIBRARIES: [&str; 4] = ["libstdc++6", "libgcc-s1", "libgomp1", "zlib1g"];

/// The Debian packages (beyond the essential set) an image of `kind` needs.
pub(crate) fn packages(kind: ImageKind) -> Vec<&'static str> {
    match kind {
        // Not python3-minimal: `json` and most of the stdlib live in libpython3.11-stdlib.
        ImageKind::Runtime(Language::Python) => [&["python3"][..], &NATIVE_LIBRARIES].concat(),
        ImageKind::Runtime(Language::Node) => [&["nodejs"][..], &NATIVE_LIBRARIES].concat(),
        // dash, bash, coreutils, sed, grep, ... are all essential.
        ImageKind::Runtime(Language::Shell | Language::Native) => vec![],
        // The installers, with the image's own interpreter and CA certificates.
        // They only unpack packages, never load them: no native libraries.
        ImageKind::Builder(Language::Python) => vec!["python3", "python3-pip", "ca-certificates"],
        ImageKind::Builder(_) => vec!["nodejs", "npm", "ca-certificates"],
    }
}

/// Everything that determines the content of a base tarball.
///
/// The mirror is deliberately not part of it: any mirror of the suite yields the
/// same base, so moving hosts does not invalidate the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseRecipe {
    /// Debian suite.
    pub suite: String,
    /// mmdebstrap variant.
    pub variant: String,
    /// Extra packages (`--include`).
    pub packages: Vec<String>,
    /// dpkg options (`--dpkgopt`).
    pub dpkg_options: Vec<String>,
    /// mmdebstrap hook directories (`--hook-dir`).
    pub hook_dirs: Vec<String>,
}

impl BaseRecipe {
    /// The recipe used for `kind`.
    pub fn for_kind(kind: ImageKind) -> Self {
        BaseRecipe {
            suite: SUITE.to_string(),
            variant: VARIANT.to_string(),
            packages: packages(kind).iter().map(|p| p.to_string()).collect(),
            dpkg_options: DPKG_OPTIONS.iter().map(|o| o.to_string()).collect(),
            hook_dirs: vec![MERGED_USR_HOOK.to_string()],
        }
    }

    /// sha256 (hex) over the recipe version and every field.
    pub fn hash(&self) -> String {
        let mut packages = self.packages.clone();
        packages.sort();
        let mut h = Sha256::new();
        field(
            &mut h,
            "recipe-version",
            RECIPE_VERSION.to_string().as_bytes(),
        );
        field(&mut h, "suite", self.suite.as_bytes());
        field(&mut h, "variant", self.variant.as_bytes());
        for p in &packages {
            field(&mut h, "include", p.as_bytes());
        }
        for o in &self.dpkg_options {
            field(&mut h, "dpkgopt", o.as_bytes());
        }
        for d in &self.hook_dirs {
            field(&mut h, "hook-dir", d.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// sha256 (hex) naming a final image: the base it is unpacked from, the
/// bootstrap files, the agent binary and the layout version.
pub(crate) fn full_hash(
    base_hash: &str,
    bootstraps: &[(&str, &str)],
    agent_sha256: &str,
) -> String {
    let mut h = Sha256::new();
    field(
        &mut h,
        "layout-version",
        LAYOUT_VERSION.to_string().as_bytes(),
    );
    field(&mut h, "base", base_hash.as_bytes());
    for (name, contents) in bootstraps {
        field(&mut h, "bootstrap-name", name.as_bytes());
        field(&mut h, "bootstrap-contents", contents.as_bytes());
    }
    field(&mut h, "agent", agent_sha256.as_bytes());
    hex::encode(h.finalize())
}

/// sha256 (hex) of a byte string.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The prefix of `hash` used in names.
pub(crate) fn short(hash: &str) -> &str {
    &hash[..SHORT_HASH_LEN]
}

/// Feeds one length-prefixed, labelled field so that field boundaries are unambiguous.
fn field(h: &mut Sha256, label: &str, value: &[u8]) {
    h.update((label.len() as u64).to_le_bytes());
    h.update(label.as_bytes());
    h.update((value.len() as u64).to_le_bytes());
    h.update(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_for(lang: Language, agent: &[u8]) -> (String, String) {
        let base = BaseRecipe::for_kind(ImageKind::Runtime(lang)).hash();
        let full = full_hash(&base, &BOOTSTRAPS, &sha256_hex(agent));
        (base, full)
    }

    #[test]
    fn agent_change_changes_full_hash_only() {
        let (base1, full1) = full_for(Language::Python, b"agent v1");
        let (base2, full2) = full_for(Language::Python, b"agent v2");
        assert_eq!(base1, base2);
        assert_ne!(full1, full2);
    }

    #[test]
    fn bootstrap_change_changes_full_hash_only() {
        let base = BaseRecipe::for_kind(ImageKind::Runtime(Language::Node)).hash();
        let agent = sha256_hex(b"agent");
        let edited = [("python.py", "print('x')"), BOOTSTRAPS[1]];
        assert_ne!(
            full_hash(&base, &BOOTSTRAPS, &agent),
            full_hash(&base, &edited, &agent)
        );
        assert_eq!(
            base,
            BaseRecipe::for_kind(ImageKind::Runtime(Language::Node)).hash()
        );
    }

    #[test]
    fn package_change_changes_base_hash() {
        let recipe = BaseRecipe::for_kind(ImageKind::Runtime(Language::Python));
        let mut more = recipe.clone();
        more.packages.push("python3-venv".to_string());
        assert_ne!(recipe.hash(), more.hash());

        let mut dpkg = recipe.clone();
        dpkg.dpkg_options.pop();
        assert_ne!(recipe.hash(), dpkg.hash());
    }

    #[test]
    fn runtimes_with_binary_packages_carry_the_native_libraries() {
        for lang in [Language::Python, Language::Node] {
            let recipe = BaseRecipe::for_kind(ImageKind::Runtime(lang));
            for lib in NATIVE_LIBRARIES {
                assert!(recipe.packages.iter().any(|p| p == lib), "{lang}: {lib}");
            }
        }
    }

    #[test]
    fn package_order_does_not_matter() {
        let mut a = BaseRecipe::for_kind(ImageKind::Runtime(Language::Shell));
        a.packages = vec!["curl".into(), "jq".into()];
        let mut b = a.clone();
        b.packages.reverse();
        assert_eq!(a.hash(), b.hash());
    }

    #[test]
    fn languages_have_distinct_bases_and_stable_hashes() {
        let hashes: Vec<String> = Language::IMAGES
            .iter()
            .map(|l| BaseRecipe::for_kind(ImageKind::Runtime(*l)).hash())
            .collect();
        assert_ne!(hashes[0], hashes[1]);
        assert_ne!(hashes[1], hashes[2]);
        assert_ne!(hashes[0], hashes[2]);
        assert_eq!(
            hashes[0],
            BaseRecipe::for_kind(ImageKind::Runtime(Language::IMAGES[0])).hash()
        );
        assert_eq!(hashes[0].len(), 64);
        assert_eq!(short(&hashes[0]).len(), SHORT_HASH_LEN);
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let mut a = BaseRecipe::for_kind(ImageKind::Runtime(Language::Shell));
        a.packages = vec!["ab".into(), "c".into()];
        let mut b = a.clone();
        b.packages = vec!["a".into(), "bc".into()];
        assert_ne!(a.hash(), b.hash());
    }
}
