//! Compiles `chamberlain/v1/*.proto` with the vendored `protoc` (no system install) and writes
//! the descriptor set (with imports, as Envoy's JSON transcoder needs it) next to the code.
//!
//! The `google/api/{annotations,http}.proto` files come from the `envoy-types` crate's package,
//! which ships googleapis; `CHAMBERLAIN_GOOGLEAPIS_DIR` overrides where they are looked for
//! (a directory holding `google/api/annotations.proto`).

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let googleapis = googleapis_dir()?;
    let protos: Vec<PathBuf> = ["common", "sections", "chambers", "batches", "readings", "auth"]
        .iter()
        .map(|name| here.join(format!("chamberlain/v1/{name}.proto")))
        .collect();
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    println!("cargo:rerun-if-env-changed=CHAMBERLAIN_GOOGLEAPIS_DIR");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("chamberlain_descriptor.bin"))
        .compile_with_config(
            config,
            &protos,
            &[here, googleapis, protoc_bin_vendored::include_path()?],
        )?;
    Ok(())
}

/// Where `google/api/annotations.proto` is: the override, or the newest `envoy-types` package
/// in Cargo's registry sources.
fn googleapis_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("CHAMBERLAIN_GOOGLEAPIS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map_err(|_| "neither CARGO_HOME nor HOME is set".to_string())?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(cargo_home.join("registry/src"))
        .map_err(|e| format!("cannot read Cargo's registry sources: {e}"))?
        .filter_map(Result::ok)
        .flat_map(|index| std::fs::read_dir(index.path()).into_iter().flatten())
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("envoy-types-"))
        })
        .map(|e| e.path().join("proto/googleapis"))
        .filter(|dir| dir.join("google/api/annotations.proto").is_file())
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        "google/api/annotations.proto not found: the envoy-types crate's sources are not in \
         Cargo's registry (run `cargo fetch`), or set CHAMBERLAIN_GOOGLEAPIS_DIR"
            .to_string()
    })
}
