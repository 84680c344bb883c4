//! Where the server is and who is calling: `--server`, `--token` and `--config` (each also an
//! environment variable), the config file, and the connection they make.

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::failure::{Failure, exit};
use crate::render::Output;

/// Where the server is and who is calling: flag, then environment, then the config file.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
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
        /// Tokens are 54 characters (`chm_` and 50): anything far longer is a mistake (a file's
        /// content, a pasted log), and a server refuses such a header with a bare HTTP/2 error.
        const LONGEST_TOKEN: usize = 1024;
        if let Some(t) = &token
            && t.trim().len() > LONGEST_TOKEN
        {
            return Err(Failure::usage(format!(
                "invalid setting --token (CHAMBERLAIN_TOKEN): {} characters; a Chamberlain token \
                 has 54 (chm_...)",
                t.trim().len()
            )));
        }
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
