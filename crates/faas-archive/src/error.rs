/// Why an upload was refused or could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The upload is malformed or names something it may not (a client error).
    #[error("{0}")]
    Invalid(String),
    /// The upload is over one of the [`crate::Limits`] (a client error).
    #[error("{0}")]
    TooLarge(String),
    /// Writing or removing a tree on the host failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl ArchiveError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        ArchiveError::Invalid(msg.into())
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ArchiveError {
        let context = context.into();
        move |source| ArchiveError::Io { context, source }
    }

    pub(crate) fn errno(context: impl Into<String>) -> impl FnOnce(nix::Error) -> ArchiveError {
        let context = context.into();
        move |e| ArchiveError::Io {
            context,
            source: std::io::Error::from(e),
        }
    }
}
