//! Compiles `chamberlain/v1/*.proto` with the vendored `protoc` (no system install) and writes
//! the descriptor set (with imports, as Envoy's JSON transcoder needs it) next to the code.
//!
//! The `google/api/{annotations,http}.proto` files come from the `envoy-types` crate's package,
//! which ships googleapis; `CHAMBERLAIN_GOOGLEAPIS_DIR` overrides where they are looked for
//! (a directory holding `google/api/annotations.proto`). `google.rpc.Status` and
//! `google.rpc.BadRequest` (`status.proto`, `error_details.proto`) come from the `tonic-types`
//! crate's package (override: `CHAMBERLAIN_RPC_PROTO_DIR`): they are compiled into the
//! descriptor set so that Envoy's transcoder can turn error details into JSON.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let googleapis = registry_dir(
        "CHAMBERLAIN_GOOGLEAPIS_DIR",
        "envoy-types-",
        "proto/googleapis",
        "google/api/annotations.proto",
    )?;
    let rpc = registry_dir(
        "CHAMBERLAIN_RPC_PROTO_DIR",
        "tonic-types-",
        "proto",
        "error_details.proto",
    )?;
    let mut protos: Vec<PathBuf> = [
        "common", "sections", "chambers", "batches", "readings", "auth", "events", "alerts",
    ]
    .iter()
    .map(|name| here.join(format!("chamberlain/v1/{name}.proto")))
    .collect();
    protos.push(rpc.join("status.proto"));
    protos.push(rpc.join("error_details.proto"));
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    println!("cargo:rerun-if-env-changed=CHAMBERLAIN_GOOGLEAPIS_DIR");
    println!("cargo:rerun-if-env-changed=CHAMBERLAIN_RPC_PROTO_DIR");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Google's comments carry code samples that rustdoc would run as doc tests.
    config.disable_comments([".google"]);
    // `prost::Name` on every message: the CLI prints any reply as JSON by its full name.
    config.enable_type_names();
    tonic_prost_build::configure()
        // A message that does not decode (invalid UTF-8 in a string, a truncated field) is the
        // caller's mistake: INVALID_ARGUMENT, not prost's INTERNAL (see src/codec.rs).
        .codec_path("crate::codec::ApiCodec")
        .file_descriptor_set_path(out.join("chamberlain_descriptor.bin"))
        .compile_with_config(
            config,
            &protos,
            &[here, googleapis, rpc, protoc_bin_vendored::include_path()?],
        )?;
    Ok(())
}

/// The directory `override_var` names, or `subdir` of the newest package in Cargo's registry
/// sources whose name starts with `package` and that holds `marker`.
fn registry_dir(
    override_var: &str,
    package: &str,
    subdir: &str,
    marker: &str,
) -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var(override_var) {
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
                .is_some_and(|n| n.starts_with(package))
        })
        .map(|e| e.path().join(subdir))
        .filter(|dir| dir.join(marker).is_file())
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        format!(
            "{marker} not found: the {package}* crate's sources are not in Cargo's registry \
             (run `cargo fetch`), or set {override_var}"
        )
    })
}
