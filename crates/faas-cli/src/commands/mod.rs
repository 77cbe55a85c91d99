//! One module per subcommand.

pub mod deploy;
pub mod images;
pub mod invoke;
pub mod manage;
pub mod serve;
