//! One module per subcommand.

pub mod admin;
pub mod attest;
pub mod deploy;
pub mod doctor;
pub mod images;
pub mod invoke;
pub mod jobs;
pub mod manage;
pub mod schedule;
pub mod secrets;
pub mod serve;
