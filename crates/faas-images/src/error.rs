use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use crate::ImageKind;

/// Everything that can go wrong while finding or building a runtime image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// `mmdebstrap` is not on `PATH`.
    #[error("mmdebstrap is not installed (run: apt-get install mmdebstrap)")]
    MmdebstrapMissing,

    /// The mmdebstrap hook directory that sets up merged-/usr without pulling in
    /// `usrmerge` and Perl is missing (mmdebstrap too old or not from Debian).
    #[error(
        "mmdebstrap hook directory {0} is missing (install the Debian mmdebstrap package, >= 1.0)"
    )]
    MergedUsrHookMissing(PathBuf),

    /// Building requires root (mmdebstrap `--mode=root`, and unpacking the base
    /// tarball must keep file ownership).
    #[error("building the {lang} image requires root (effective uid is {euid})")]
    NotRoot {
        /// The image being built.
        lang: ImageKind,
        /// The effective uid of this process.
        euid: u32,
    },

    /// mmdebstrap exited unsuccessfully.
    #[error("mmdebstrap failed for the {lang} image ({status}); last output:\n{stderr_tail}")]
    MmdebstrapFailed {
        /// The image being built.
        lang: ImageKind,
        /// Exit status of mmdebstrap.
        status: ExitStatus,
        /// The last lines mmdebstrap printed.
        stderr_tail: String,
    },

    /// The system `tar` failed to unpack the base tarball.
    #[error("unpacking the {lang} base tarball failed ({status}):\n{stderr_tail}")]
    ExtractFailed {
        /// The image being built.
        lang: ImageKind,
        /// Exit status of `tar`.
        status: ExitStatus,
        /// The last lines `tar` printed.
        stderr_tail: String,
    },

    /// The guest agent binary to install does not exist or is not a file.
    #[error("guest agent binary {0} not found (build faas-guest-agent first)")]
    AgentMissing(PathBuf),

    /// An image directory exists but its `image.json` cannot be read.
    #[error("corrupt image manifest {path} (rebuild with force): {source}")]
    Manifest {
        /// Path of the manifest.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },

    /// A filesystem or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path involved.
        context: String,
        /// The underlying error.
        source: io::Error,
    },

    /// A blocking helper task panicked or was cancelled.
    #[error("image build task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ImageError {
    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to `io::Result`s.
pub(crate) trait IoContext<T> {
    /// Converts the error into [`ImageError::Io`] with the lazily built context.
    fn ctx<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(context(), e))
    }
}
