//! Function code uploads, from bytes on the wire to a tree on disk.
//!
//! [`CodeTree`] is the validated, in-memory form of an upload (zip, tar.gz, a
//! single file or a map of files): only relative paths without `..`, and
//! symbolic links that stay inside the tree without passing through another
//! link. [`CodeStore`] writes trees content-addressed to disk, relative to a
//! directory file descriptor and without ever following a link, and collects
//! the ones nothing references any more.
//!
//! Nothing touches the disk until a whole upload has been validated in memory,
//! so a refused upload leaves nothing behind.

#![deny(clippy::undocumented_unsafe_blocks)]

mod error;
mod store;
mod tree;
mod write;

pub use error::ArchiveError;
pub use store::CodeStore;
pub use tree::{CodeTree, Entry, Limits};
