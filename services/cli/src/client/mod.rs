//! Operator commands: a gRPC client of a running server (`chamberlain standalone`, or a
//! gateway directly or through Envoy). Every command is one or a few API calls; what they
//! print is in [`render`], how a refusal becomes an exit code in [`Failure`].

/// `println!` for replies, except that a closed stdout (`| head`) ends the command quietly
/// instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::client::write_out(format_args!($($arg)*))
    };
}

mod commands;
mod import;
mod render;

use std::path::PathBuf;
use std::time::Duration;

use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

pub(crate) use commands::{
    BatchesCommand, ChambersCommand, DetectorsCommand, Operator, PollsCommand, ReadingsCommand,
    SectionsCommand, TokensCommand, UsersCommand, run,
};
pub(crate) use import::ImportArgs;
pub(crate) use render::Output;

/// Where the server is and who is calling: flag, then environment, then the config file.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientArgs {
    /// The server's gRPC address (`chamberlain standalone` listens on 127.0.0.1:50051).
    #[arg(long, global = true, env = "CHAMBERLAIN_SERVER")]
    server: Option<String>,
    /// An API token (`chm_...`), as `chamberlain standalone` printed it or `tokens create`
    /// made it.
    #[arg(long, global = true, env = "CHAMBERLAIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A TOML file with `server = "..."` and `token = "..."` (default:
    /// $XDG_CONFIG_HOME/chamberlain/config.toml, else ~/.config/chamberlain/config.toml;
    /// only a file named here must exist).
    #[arg(long, global = true, env = "CHAMBERLAIN_CONFIG")]
    config: Option<PathBuf>,
    /// How replies are printed.
    #[arg(
        long,
        global = true,
        env = "CHAMBERLAIN_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    output: Output,
}

/// The server address used when no flag, variable or config file names one.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: Option<String>,
    token: Option<String>,
}

/// Why a command failed, and the exit code that tells a script which kind of failure it was.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: u8,
    pub(crate) message: String,
}

/// Exit codes of the operator commands (the README lists them).
pub(crate) mod exit {
    /// The server refused or failed the call for another reason.
    pub(crate) const FAILED: u8 = 1;
    /// Bad local input: a setting, a flag value, an unreadable file.
    pub(crate) const USAGE: u8 = 2;
    /// No token, a bad, expired or revoked token, or a role too low for the call.
    pub(crate) const DENIED: u8 = 3;
    /// No such chamber, section, batch, detector, token or user.
    pub(crate) const NOT_FOUND: u8 = 4;
    /// The server refused the input (the message names the field); an import with bad rows.
    pub(crate) const INVALID: u8 = 5;
    /// The server cannot be reached or is unavailable.
    pub(crate) const UNAVAILABLE: u8 = 6;
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            exit: exit::USAGE,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let exit = match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => exit::DENIED,
            Code::NotFound => exit::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange | Code::AlreadyExists => exit::INVALID,
            Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
            _ => exit::FAILED,
        };
        let mut message = format!("{}: {}", code_name(status.code()), status.message());
        if let Some(bad) = status.get_details_bad_request() {
            for v in bad.field_violations {
                message.push_str(&format!("\n  {}: {}", v.field, v.description));
            }
        }
        Self { exit, message }
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated => "not authenticated",
        Code::PermissionDenied => "permission denied",
        Code::NotFound => "not found",
        Code::InvalidArgument => "invalid",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition => "refused",
        Code::ResourceExhausted => "rate limited",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "timed out",
        _ => "failed",
    }
}

/// Adds the bearer token to every call.
#[derive(Debug, Clone)]
pub(crate) struct BearerToken(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The transport every typed client shares.
pub(crate) type Transport = InterceptedService<Channel, BearerToken>;

/// A connection to the server, with the output format chosen.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) transport: Transport,
    pub(crate) output: Output,
}

impl ClientArgs {
    /// Resolves server and token and connects.
    ///
    /// # Errors
    /// `USAGE` for an unreadable config file or a malformed address or token; `UNAVAILABLE`
    /// when the server cannot be reached.
    pub(crate) async fn connect(&self) -> Result<Client, Failure> {
        let file = self.config_file()?;
        let server = self
            .server
            .clone()
            .or(file.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let token = self.token.clone().or(file.token);
        let server = if server.contains("://") {
            server
        } else {
            format!("http://{server}")
        };
        let endpoint = Endpoint::from_shared(server.clone())
            .map_err(|e| {
                Failure::usage(format!(
                    "invalid setting --server (CHAMBERLAIN_SERVER): {e}"
                ))
            })?
            .connect_timeout(Duration::from_secs(5));
        let header = token
            .map(|t| {
                AsciiMetadataValue::try_from(format!("Bearer {}", t.trim())).map_err(|_| {
                    Failure::usage(
                        "invalid setting --token (CHAMBERLAIN_TOKEN): not printable ASCII",
                    )
                })
            })
            .transpose()?;
        let channel = endpoint.connect().await.map_err(|e| Failure {
            exit: exit::UNAVAILABLE,
            message: format!(
                "cannot reach the server at {server}: {e} (set --server or CHAMBERLAIN_SERVER)"
            ),
        })?;
        Ok(Client {
            transport: InterceptedService::new(channel, BearerToken(header)),
            output: self.output,
        })
    }

    fn config_file(&self) -> Result<ConfigFile, Failure> {
        let (path, required) = match &self.config {
            Some(path) => (path.clone(), true),
            None => match default_config_path() {
                Some(path) => (path, false),
                None => return Ok(ConfigFile::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ConfigFile::default());
            }
            Err(e) => {
                return Err(Failure::usage(format!(
                    "cannot read the config file {}: {e}",
                    path.display()
                )));
            }
        };
        toml::from_str(&text)
            .map_err(|e| Failure::usage(format!("invalid config file {}: {e}", path.display())))
    }
}

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("chamberlain").join("config.toml"))
}

/// A duration as typed (`5s`, `1m30s`, `500ms`), named `flag` in errors.
pub(crate) fn parse_duration(flag: &str, raw: &str) -> Result<prost_types::Duration, Failure> {
    let d = humantime::parse_duration(raw.trim())
        .map_err(|e| Failure::usage(format!("{flag}: {e} (e.g. 5s, 1m30s, 500ms)")))?;
    Ok(prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    })
}

/// A point in time: RFC 3339 (`2026-12-02T10:00:00Z`), `now`, or a duration ago (`1h`).
pub(crate) fn parse_time(flag: &str, raw: &str) -> Result<prost_types::Timestamp, Failure> {
    let raw = raw.trim();
    let now = time::OffsetDateTime::now_utc();
    let at = if raw == "now" {
        now
    } else if let Ok(at) =
        time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
    {
        at
    } else if let Ok(ago) = humantime::parse_duration(raw) {
        now - ago
    } else {
        return Err(Failure::usage(format!(
            "{flag}: {raw:?} is neither RFC 3339 (2026-12-02T10:00:00Z), `now`, nor a duration ago (1h)"
        )));
    };
    let nanos = at.unix_timestamp_nanos();
    Ok(prost_types::Timestamp {
        seconds: i64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(i64::MAX),
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    })
}

/// Writes one line of a reply to stdout (see `out!`).
pub(crate) fn write_out(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        // Whoever reads the output has seen enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("chamberlain: cannot write to stdout: {e}");
            std::process::exit(i32::from(exit::USAGE));
        }
    }
}
