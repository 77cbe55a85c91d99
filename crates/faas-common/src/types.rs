use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A language runtime a function can be written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// CPython 3 (`def handler(event, context)`).
    Python,
    /// Node.js (`exports.handler = async (event, context) => ...`).
    Node,
    /// POSIX shell: payload on stdin, response on stdout.
    Shell,
    /// A native executable: payload on stdin, response on stdout.
    Native,
}

impl Language {
    /// Every supported language, in a stable order.
    pub const ALL: [Language; 4] = [
        Language::Python,
        Language::Node,
        Language::Shell,
        Language::Native,
    ];

    /// The languages that have a runtime image of their own.
    pub const IMAGES: [Language; 3] = [Language::Python, Language::Node, Language::Shell];

    /// The runtime image this language runs in (native executables use the
    /// shell image: a plain Debian userland).
    pub fn image(self) -> Language {
        match self {
            Language::Native => Language::Shell,
            other => other,
        }
    }

    /// Whether the handler is a file run once per invocation (no resident bootstrap).
    pub fn is_process_per_call(self) -> bool {
        matches!(self, Language::Shell | Language::Native)
    }

    /// The lowercase name used in the API and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Node => "node",
            Language::Shell => "shell",
            Language::Native => "native",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Error for a language name that is not supported.
#[derive(Debug, thiserror::Error)]
#[error("unknown language {0:?} (expected one of: python, node, shell, native)")]
pub struct UnknownLanguage(pub String);

impl FromStr for Language {
    type Err = UnknownLanguage;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "python" | "python3" => Ok(Language::Python),
            "node" | "nodejs" | "javascript" => Ok(Language::Node),
            "shell" | "sh" | "bash" => Ok(Language::Shell),
            "native" | "binary" => Ok(Language::Native),
            other => Err(UnknownLanguage(other.to_string())),
        }
    }
}

/// A kind of sandbox functions run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// Linux namespaces + cgroups + seccomp through runc.
    Native,
    /// Containers of a Docker daemon.
    Docker,
    /// MicroVMs (QEMU `microvm`, or Firecracker: the VMM is a setting of the
    /// kind, not a kind of its own).
    Microvm,
}

impl SandboxKind {
    /// Every kind, in a stable order.
    pub const ALL: [SandboxKind; 3] = [
        SandboxKind::Native,
        SandboxKind::Docker,
        SandboxKind::Microvm,
    ];

    /// The lowercase name used in the API, flags and config files.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Native => "native",
            SandboxKind::Docker => "docker",
            SandboxKind::Microvm => "microvm",
        }
    }
}

impl fmt::Display for SandboxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A sandbox kind name that is not one of ours.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown sandbox kind {0:?} (expected native, docker, microvm or firecracker)")]
pub struct UnknownSandboxKind(pub String);

impl FromStr for SandboxKind {
    type Err = UnknownSandboxKind;

    /// `firecracker` is accepted as the microVM kind (`FAAS_EXECUTOR_TYPE`
    /// names it so); the VMM itself is chosen by `FAAS_FC_BINARY_PATH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(SandboxKind::Native),
            "docker" => Ok(SandboxKind::Docker),
            "microvm" | "firecracker" => Ok(SandboxKind::Microvm),
            other => Err(UnknownSandboxKind(other.to_string())),
        }
    }
}

/// A function as a user deploys it (`POST /functions`).
///
/// The first seven fields are the compatible core (their names are kept for
/// existing clients); the rest extend it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FunctionDefinition {
    /// Unique, human-chosen name; deploying an existing name adds a version.
    pub name: String,
    /// `python`, `node` or `shell`.
    pub language: String,
    /// Base64 of a zip or tar.gz archive, or of a single source file.
    #[serde(default)]
    pub code_base64: Option<String>,
    /// `module.function` for Python and Node.js, a script path for shell.
    #[serde(default)]
    pub handler: String,
    /// Packages to install (pip requirement specifiers or npm package specs).
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Memory limit of one instance, in MiB.
    #[serde(default)]
    pub memory_mb: Option<u32>,
    /// Wall-clock limit of one invocation, in seconds.
    #[serde(default)]
    pub timeout_sec: Option<u32>,
    /// Size of `/tmp` of one instance, in MiB (default 512, at most the
    /// node's `max_ephemeral_mb`); it persists across the calls one warm
    /// instance serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_mb: Option<u32>,
    /// Source files by relative path; an alternative to `code_base64`.
    #[serde(default)]
    pub files: Option<BTreeMap<String, String>>,
    /// Environment variables given to the function.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Sandbox kind (`native`, `docker`); the node's default when absent.
    #[serde(default)]
    pub sandbox: Option<String>,
    /// Hardware the function must run on, verified by attestation: `tdx` or `sev-snp`.
    #[serde(default)]
    pub attestation: Option<String>,
    /// Network access: none unless an egress allow-list opens destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::NetworkPolicy>,
    /// How many instances it keeps and may have, and how many calls may
    /// wait for one; kept by a redeploy that does not give it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Scaling>,
    /// Retries of a failed asynchronous invocation (0-10, default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Cron schedules that invoke it asynchronously; given, they replace the
    /// function's; absent, a redeploy keeps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedules: Option<Vec<ScheduleSpec>>,
}

/// A cron schedule: on each tick, an asynchronous invocation with `payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Five fields (minute hour day-of-month month day-of-week), or six with
    /// seconds first; UTC.
    pub cron: String,
    /// The payload of each invocation (JSON).
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// A function's scaling (`PUT /functions/{fn}/scaling`); absent fields take
/// the node's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    /// Instances kept started at all times (provisioned): started at deploy
    /// and at server start, replaced when one dies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instances: Option<u32>,
    /// Most instances at once, so most invocations running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// Invocations one instance runs at once; only 1 is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Seconds an idle instance above `min_instances` is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_sec: Option<u32>,
    /// Invocations that may wait for an instance when all are busy; beyond
    /// them the answer is 429 at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
}

/// The outcome of one invocation (the compatible result type of `/execute`
/// and the executor interface).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationResult {
    /// Identifier of this invocation.
    pub request_id: String,
    /// What the function returned (stdout for `/execute`).
    #[serde(default, with = "opt_bytes_as_base64")]
    pub response: Option<Vec<u8>>,
    /// What the function printed.
    pub logs: Option<String>,
    /// Why the invocation failed, if it did.
    pub error: Option<String>,
}

/// Arguments of the original `execute_function` job and of `POST /execute`:
/// run `command` in runtime `image` with `payload` on stdin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecuteFunctionArgs {
    /// Runtime image: `python`, `node` or `shell`.
    pub image: String,
    /// Argument vector; the first element is the program.
    pub command: Vec<String>,
    /// `KEY=VALUE` pairs.
    #[serde(default)]
    pub env_vars: Option<Vec<String>>,
    /// Bytes fed to the command's stdin.
    #[serde(default, with = "bytes_as_base64")]
    pub payload: Vec<u8>,
}

/// What an executor needs for a one-shot run (the compatible executor input).
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// Identifier used to name the sandbox.
    pub function_id: String,
    /// Runtime image to run in.
    pub source: String,
    /// Argument vector.
    pub command: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env_vars: Option<Vec<String>>,
    /// Bytes fed to stdin.
    pub payload: Vec<u8>,
    /// Memory limit in MiB.
    pub memory_mb: u32,
    /// Wall-clock limit in seconds.
    pub timeout_sec: u32,
}

/// Bytes travel through JSON as standard base64 strings.
pub mod bytes_as_base64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize bytes as a base64 string.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    /// Deserialize bytes from a base64 string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// Optional bytes as an optional base64 string.
pub mod opt_bytes_as_base64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize optional bytes as a base64 string or null.
    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_str(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    /// Deserialize optional bytes from a base64 string or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => STANDARD
                .decode(s)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}
