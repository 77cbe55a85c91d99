//! `protobuf-src`'s API backed by the system's `protoc` (Debian: `protobuf-compiler`).
//!
//! The crates.io `protobuf-src` compiles protobuf from C++ source in its build
//! script, unconditionally, even when its caller only wants a `protoc` that is
//! already installed. For us that caller is `blueprint-auth`'s build script,
//! which compiles one test proto; the system compiler does that just as well,
//! and skipping the C++ build takes minutes off every cold build. The root
//! `Cargo.toml` patches crates.io's `protobuf-src` with this crate.

use std::path::PathBuf;

/// Path of the `protoc` binary: `$PROTOC` if set, else the first `protoc` on `$PATH`.
///
/// # Panics
///
/// When no `protoc` is found; this runs in build scripts, where a panic is how a
/// failure is reported, and the message says what to install.
pub fn protoc() -> PathBuf {
    if let Some(p) = std::env::var_os("PROTOC") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("protoc"))
        .find(|p| p.is_file())
        .expect("protoc not found on PATH: install it (Debian: apt-get install protobuf-compiler)")
}

/// Directory holding protobuf's well-known `.proto` includes.
pub fn include() -> PathBuf {
    PathBuf::from("/usr/include")
}
