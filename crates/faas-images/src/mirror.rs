//! Picks the Debian mirrors to build from, following the host's apt sources.

use std::fs;
use std::path::Path;

/// Used when the host lists no Debian mirror.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Used when the host lists no Debian security mirror.
const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// One enabled `deb` source of the host: every URI serves every suite.
#[derive(Debug, Default, PartialEq, Eq)]
struct AptSource {
    uris: Vec<String>,
    suites: Vec<String>,
}

/// The mirrors for the suite itself, its `-updates` and its `-security` suite.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Mirrors {
    /// Mirror of the suite itself.
    pub main: String,
    /// Mirror of `<suite>-updates`.
    pub updates: String,
    /// Mirror of `<suite>-security`.
    pub security: String,
}

impl Mirrors {
    /// Reads the host's apt sources (`/etc/apt/sources.list`,
    /// `/etc/apt/sources.list.d/*.list` and `*.sources`) and picks mirrors for `suite`.
    pub fn from_host(suite: &str) -> Mirrors {
        Mirrors::select(&host_sources(Path::new("/etc/apt")), suite)
    }

    /// The one-line apt sources mmdebstrap is given (main component only).
    pub fn source_lines(&self, suite: &str) -> Vec<String> {
        vec![
            format!("deb {} {suite} main", self.main),
            format!("deb {} {suite}-updates main", self.updates),
            format!("deb {} {suite}-security main", self.security),
        ]
    }

    fn select(sources: &[AptSource], suite: &str) -> Mirrors {
        let uri_for = |wanted: &dyn Fn(&str) -> bool| {
            sources
                .iter()
                .filter(|s| s.suites.iter().any(|x| wanted(x)))
                .flat_map(|s| s.uris.first())
                .next()
                .cloned()
        };
        let updates_suite = format!("{suite}-updates");
        let security_suite = format!("{suite}-security");
        // The suite itself, else any non-security Debian archive (a host on
        // another release still shows which mirror it can reach).
        let main = uri_for(&|s| s == suite)
            .or_else(|| {
                sources
                    .iter()
                    .filter(|s| s.suites.iter().any(|x| !x.ends_with("-security")))
                    .flat_map(|s| s.uris.iter())
                    .find(|u| u.ends_with("/debian"))
                    .cloned()
            })
            .unwrap_or_else(|| DEFAULT_MIRROR.to_string());
        let updates = uri_for(&|s| s == updates_suite).unwrap_or_else(|| main.clone());
        let security = uri_for(&|s| s == security_suite)
            .or_else(|| uri_for(&|s| s.ends_with("-security")))
            .unwrap_or_else(|| DEFAULT_SECURITY_MIRROR.to_string());
        Mirrors {
            main,
            updates,
            security,
        }
    }
}

/// All enabled `deb` sources under `apt_dir`, in apt's reading order.
fn host_sources(apt_dir: &Path) -> Vec<AptSource> {
    let mut sources = Vec::new();
    if let Ok(text) = fs::read_to_string(apt_dir.join("sources.list")) {
        sources.extend(parse_one_line(&text));
    }
    let mut parts: Vec<_> = fs::read_dir(apt_dir.join("sources.list.d"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    parts.sort();
    for path in parts {
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        match path.extension().and_then(|e| e.to_str()) {
            Some("list") => sources.extend(parse_one_line(&text)),
            Some("sources") => sources.extend(parse_deb822(&text)),
            _ => {}
        }
    }
    sources
}

/// Only plain HTTP(S) mirrors are usable without extra mmdebstrap hooks.
fn usable_uri(uri: &str) -> Option<String> {
    (uri.starts_with("http://") || uri.starts_with("https://"))
        .then(|| uri.trim_end_matches('/').to_string())
}

/// Parses the classic `deb [options] uri suite component...` format.
fn parse_one_line(text: &str) -> Vec<AptSource> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or("").trim();
            let rest = line.strip_prefix("deb ")?.trim_start();
            let rest = match rest.strip_prefix('[') {
                Some(opts) => opts.split_once(']')?.1,
                None => rest,
            };
            let mut words = rest.split_whitespace();
            let uri = usable_uri(words.next()?)?;
            let suite = words.next()?.to_string();
            Some(AptSource {
                uris: vec![uri],
                suites: vec![suite],
            })
        })
        .collect()
}

/// Parses the deb822 `.sources` format (stanzas separated by blank lines).
fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    let mut stanza: Vec<(String, String)> = Vec::new();
    let lines = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .chain(std::iter::once(""));
    for line in lines {
        if line.trim().is_empty() {
            if let Some(source) = stanza_source(&stanza) {
                out.push(source);
            }
            stanza.clear();
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = stanza.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            stanza.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

fn stanza_source(stanza: &[(String, String)]) -> Option<AptSource> {
    let get = |key: &str| {
        stanza
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if get("enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
        return None;
    }
    if !get("types")?.split_whitespace().any(|t| t == "deb") {
        return None;
    }
    let source = AptSource {
        uris: get("uris")?
            .split_whitespace()
            .filter_map(usable_uri)
            .collect(),
        suites: get("suites")?
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    };
    (!source.uris.is_empty() && !source.suites.is_empty()).then_some(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
";

    #[test]
    fn deb822_stanzas() {
        let sources = parse_deb822(DEB822);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].uris, ["http://mirror.example/debian"]);
        assert_eq!(sources[0].suites, ["bookworm", "bookworm-updates"]);
        let m = Mirrors::select(&sources, "bookworm");
        assert_eq!(
            m,
            Mirrors {
                main: "http://mirror.example/debian".into(),
                updates: "http://mirror.example/debian".into(),
                security: "http://security.example/debian-security".into(),
            }
        );
        assert_eq!(
            m.source_lines("bookworm")[2],
            "deb http://security.example/debian-security bookworm-security main"
        );
    }

    #[test]
    fn deb822_disabled_and_continuation() {
        let text = "Types: deb\nEnabled: no\nURIs: http://a.example/debian\nSuites: bookworm\n\n\
                    Types: deb\nURIs:\n http://b.example/debian\nSuites: bookworm\n";
        let sources = parse_deb822(text);
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].uris, ["http://b.example/debian"]);
    }

    #[test]
    fn one_line_format() {
        let text = "# comment\n\
                    deb-src http://src.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main # x\n\
                    deb cdrom:[Debian]/ bookworm main\n\
                    deb https://google.example/apt cloud-sdk main\n";
        let sources = parse_one_line(text);
        assert_eq!(sources.len(), 2);
        let m = Mirrors::select(&sources, "bookworm");
        assert_eq!(m.main, "http://m.example/debian");
        assert_eq!(m.updates, "http://m.example/debian");
        assert_eq!(m.security, DEFAULT_SECURITY_MIRROR);
    }

    #[test]
    fn other_release_host_reuses_its_mirror() {
        let text = "deb http://m.example/debian trixie main\n\
                    deb http://s.example/debian-security trixie-security main\n";
        let m = Mirrors::select(&parse_one_line(text), "bookworm");
        assert_eq!(m.main, "http://m.example/debian");
        assert_eq!(m.security, "http://s.example/debian-security");
    }

    #[test]
    fn no_sources_falls_back_to_deb_debian_org() {
        let m = Mirrors::select(&[], "bookworm");
        assert_eq!(m.main, DEFAULT_MIRROR);
        assert_eq!(m.updates, DEFAULT_MIRROR);
        assert_eq!(m.security, DEFAULT_SECURITY_MIRROR);
    }

    #[test]
    fn reads_a_directory_of_sources() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        fs::write(
            dir.path().join("sources.list.d/debian.sources"),
            DEB822.as_bytes(),
        )
        .unwrap();
        fs::write(
            dir.path().join("sources.list.d/other.list.disabled"),
            "deb http://disabled.example/debian bookworm main\n",
        )
        .unwrap();
        let sources = host_sources(dir.path());
        assert_eq!(sources.len(), 2);
        assert_eq!(
            Mirrors::select(&sources, "bookworm").main,
            "http://mirror.example/debian"
        );
    }
}
