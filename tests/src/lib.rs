#![doc = include_str!("../README.md")]

pub mod api_stack;

use std::path::PathBuf;
use std::process::Command;

/// The `chamberlain` binary, built if needed (a no-op when it is up to date): the debug build
/// for tests, the release build for benchmarks.
///
/// # Panics
/// When cargo cannot build it.
pub fn chamberlain_bin_of(release: bool) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = vec![
        "build",
        "--quiet",
        "-p",
        "chamberlain-cli",
        "--bin",
        "chamberlain",
    ];
    if release {
        args.push("--release");
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(&args)
        .current_dir(&root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the chamberlain binary failed");
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    target
        .join(if release { "release" } else { "debug" })
        .join("chamberlain")
}

/// The debug `chamberlain` binary.
pub fn chamberlain_bin() -> PathBuf {
    chamberlain_bin_of(false)
}
