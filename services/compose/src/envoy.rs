//! `chamberlain envoy-config`: Envoy's configuration rendered from `envoy/envoy.template.yaml`
//! (built into the binary), with the addresses and paths of this deployment. The README, the
//! compose file and the end-to-end tests all render it with this command, so none of them
//! carries an edited copy.

use std::path::{Path, PathBuf};

use crate::settings::bad_setting;

/// The template, placeholders `${NAME}` included.
pub const TEMPLATE: &str = include_str!("../../../envoy/envoy.template.yaml");

/// Where Envoy listens and where it finds Chamberlain.
#[derive(Debug, Clone, clap::Args)]
pub struct EnvoyConfigArgs {
    /// The API's listener: gRPC and JSON for clients.
    #[arg(long, env = "CHAMBERLAIN_ENVOY_LISTEN", default_value = "0.0.0.0:8080")]
    listen: String,
    /// Envoy's admin interface (stats, config dump); keep it on loopback.
    #[arg(
        long,
        env = "CHAMBERLAIN_ENVOY_ADMIN",
        default_value = "127.0.0.1:9901"
    )]
    admin: String,
    /// The `chamberlain gateway` replicas, `host:port` separated by commas (names are resolved
    /// and re-resolved by Envoy).
    #[arg(
        long,
        env = "CHAMBERLAIN_ENVOY_GATEWAY",
        default_value = "127.0.0.1:50051"
    )]
    gateway: String,
    /// The gateways' console listeners (`CHAMBERLAIN_GATEWAY_HTTP_LISTEN`), `host:port`
    /// separated by commas: Envoy routes `/console` there.
    #[arg(
        long,
        env = "CHAMBERLAIN_ENVOY_CONSOLE",
        default_value = "127.0.0.1:8081"
    )]
    console: String,
    /// The `chamberlain auth` replicas, `host:port` separated by commas.
    #[arg(
        long,
        env = "CHAMBERLAIN_ENVOY_AUTH",
        default_value = "127.0.0.1:50052"
    )]
    auth: String,
    /// The OpenTelemetry collector Envoy sends its spans to (OTLP/gRPC). Unreachable, spans are
    /// dropped and requests are unaffected.
    #[arg(
        long,
        env = "CHAMBERLAIN_ENVOY_OTEL_COLLECTOR",
        default_value = "127.0.0.1:4317"
    )]
    otel_collector: String,
    /// The descriptor set `chamberlain descriptor-set` wrote, as Envoy will see it (a relative
    /// path is made absolute here, from the current directory).
    #[arg(
        long,
        env = "CHAMBERLAIN_ENVOY_DESCRIPTOR",
        default_value = "chamberlain.pb"
    )]
    descriptor: PathBuf,
    /// Authenticated requests per second the listener lets through to the gateways, whoever
    /// sends them (the excess is `RESOURCE_EXHAUSTED` / 429; each user and organization is
    /// limited by `chamberlain auth` too).
    #[arg(
        long,
        env = "CHAMBERLAIN_ENVOY_RATE_LIMIT_PER_SEC",
        default_value_t = 2000,
        value_parser = clap::value_parser!(u32).range(1..=10_000_000)
    )]
    rate_limit_per_sec: u32,
    /// Requests per second without an `authorization` header (sign-in, health, reflection),
    /// counted apart and before authentication, so a flood of them leaves authenticated callers
    /// alone.
    #[arg(
        long,
        env = "CHAMBERLAIN_ENVOY_ANONYMOUS_RATE_LIMIT_PER_SEC",
        default_value_t = 200,
        value_parser = clap::value_parser!(u32).range(1..=10_000_000)
    )]
    anonymous_rate_limit_per_sec: u32,
    /// TLS on the API's listener: the certificate chain (PEM) Envoy presents. Needs
    /// `--tls-key`; without both the listener is plaintext (put TLS in front of it some other
    /// way).
    #[arg(long, env = "CHAMBERLAIN_ENVOY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "CHAMBERLAIN_ENVOY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Where to write the configuration (`-`: standard output).
    #[arg(long, default_value = "envoy.yaml")]
    out: PathBuf,
}

/// One `host:port`, checked: the host is an IP address or a DNS name, so nothing it contains
/// can change the YAML around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `host:port` (`[v6]:port` for an IPv6 address).
    ///
    /// # Errors
    /// Why the text is not one, in words.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let (host, port) = raw
            .rsplit_once(':')
            .ok_or_else(|| format!("{raw:?} is not host:port (e.g. 127.0.0.1:50051)"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{raw:?}: the port must be 1-65535"))?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => {
                v6.parse::<std::net::Ipv6Addr>()
                    .map_err(|_| format!("{raw:?}: {v6:?} is not an IPv6 address"))?;
                v6.to_owned()
            }
            None if host.parse::<std::net::Ipv4Addr>().is_ok() => host.to_owned(),
            None if is_dns_name(host) => host.to_owned(),
            None => {
                return Err(format!(
                    "{raw:?}: {host:?} is neither an IP address nor a host name"
                ));
            }
        };
        Ok(Self { host, port })
    }
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// What the template needs, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyConfig {
    pub listen: Endpoint,
    pub admin: Endpoint,
    pub gateways: Vec<Endpoint>,
    pub auths: Vec<Endpoint>,
    pub consoles: Vec<Endpoint>,
    pub otel_collector: Endpoint,
    /// An absolute path.
    pub descriptor: PathBuf,
    pub rate_limit_per_sec: u32,
    pub anonymous_rate_limit_per_sec: u32,
    /// The listener's certificate chain and key (absolute paths), if it serves TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

fn endpoints(raw: &str, flag: &str, var: &str) -> Result<Vec<Endpoint>, anyhow::Error> {
    let list: Vec<Endpoint> = raw
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(Endpoint::parse)
        .collect::<Result<_, _>>()
        .map_err(|why| bad_setting(flag, var, why))?;
    if list.is_empty() {
        return Err(bad_setting(flag, var, "needs at least one host:port"));
    }
    Ok(list)
}

fn one(raw: &str, flag: &str, var: &str) -> Result<Endpoint, anyhow::Error> {
    Endpoint::parse(raw).map_err(|why| bad_setting(flag, var, why))
}

impl EnvoyConfigArgs {
    /// The checked configuration; a relative descriptor path is taken from `cwd`.
    ///
    /// # Errors
    /// A [`crate::settings::ConfigError`] naming the flag and variable of the first bad setting.
    pub fn config(&self, cwd: &Path) -> Result<EnvoyConfig, anyhow::Error> {
        let descriptor = cwd.join(&self.descriptor);
        let descriptor_text = descriptor.to_str().ok_or_else(|| {
            bad_setting(
                "--descriptor",
                "CHAMBERLAIN_ENVOY_DESCRIPTOR",
                "the path is not UTF-8",
            )
        })?;
        if descriptor_text.chars().any(char::is_control) {
            return Err(bad_setting(
                "--descriptor",
                "CHAMBERLAIN_ENVOY_DESCRIPTOR",
                "the path contains a control character",
            ));
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((
                readable_file(cwd, cert, "--tls-cert", "CHAMBERLAIN_ENVOY_TLS_CERT")?,
                readable_file(cwd, key, "--tls-key", "CHAMBERLAIN_ENVOY_TLS_KEY")?,
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(bad_setting(
                    "--tls-key",
                    "CHAMBERLAIN_ENVOY_TLS_KEY",
                    "is required with --tls-cert",
                ));
            }
            (None, Some(_)) => {
                return Err(bad_setting(
                    "--tls-cert",
                    "CHAMBERLAIN_ENVOY_TLS_CERT",
                    "is required with --tls-key",
                ));
            }
        };
        Ok(EnvoyConfig {
            tls,
            listen: one(&self.listen, "--listen", "CHAMBERLAIN_ENVOY_LISTEN")?,
            admin: one(&self.admin, "--admin", "CHAMBERLAIN_ENVOY_ADMIN")?,
            gateways: endpoints(&self.gateway, "--gateway", "CHAMBERLAIN_ENVOY_GATEWAY")?,
            auths: endpoints(&self.auth, "--auth", "CHAMBERLAIN_ENVOY_AUTH")?,
            consoles: endpoints(&self.console, "--console", "CHAMBERLAIN_ENVOY_CONSOLE")?,
            otel_collector: one(
                &self.otel_collector,
                "--otel-collector",
                "CHAMBERLAIN_ENVOY_OTEL_COLLECTOR",
            )?,
            descriptor,
            rate_limit_per_sec: self.rate_limit_per_sec,
            anonymous_rate_limit_per_sec: self.anonymous_rate_limit_per_sec,
        })
    }
}

/// `path` made absolute from `cwd`, if it names a readable file with a UTF-8, control-free
/// name (Envoy reads it when it starts; a wrong path is better refused here, naming the flag).
fn readable_file(cwd: &Path, path: &Path, flag: &str, var: &str) -> Result<PathBuf, anyhow::Error> {
    let path = cwd.join(path);
    let text = path
        .to_str()
        .ok_or_else(|| bad_setting(flag, var, "the path is not UTF-8"))?;
    if text.chars().any(char::is_control) {
        return Err(bad_setting(
            flag,
            var,
            "the path contains a control character",
        ));
    }
    std::fs::File::open(&path)
        .map_err(|e| bad_setting(flag, var, format!("cannot read {}: {e}", path.display())))?;
    Ok(path)
}

/// The listener's `transport_socket` for TLS (h2 and HTTP/1.1 by ALPN), or nothing.
fn listener_tls(tls: Option<&(PathBuf, PathBuf)>) -> String {
    let Some((cert, key)) = tls else {
        return String::new();
    };
    format!(
        "transport_socket: {{ name: envoy.transport_sockets.tls, typed_config: {{ \"@type\": \
         type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, \
         common_tls_context: {{ alpn_protocols: [h2, http/1.1], tls_certificates: [{{ \
         certificate_chain: {{ filename: {} }}, private_key: {{ filename: {} }} }}] }} }} }}",
        quoted(&cert.to_string_lossy()),
        quoted(&key.to_string_lossy())
    )
}

/// A YAML double-quoted scalar (JSON's string syntax is valid YAML).
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A flow sequence of `lb_endpoints`.
fn lb_endpoints(list: &[Endpoint]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|e| {
            format!(
                "{{ endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }} }}",
                quoted(&e.host),
                e.port
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

impl EnvoyConfig {
    /// Each placeholder's value.
    fn values(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LISTEN_HOST", quoted(&self.listen.host)),
            ("LISTEN_PORT", self.listen.port.to_string()),
            ("ADMIN_HOST", quoted(&self.admin.host)),
            ("ADMIN_PORT", self.admin.port.to_string()),
            ("GATEWAY_ENDPOINTS", lb_endpoints(&self.gateways)),
            ("AUTH_ENDPOINTS", lb_endpoints(&self.auths)),
            ("CONSOLE_ENDPOINTS", lb_endpoints(&self.consoles)),
            (
                "OTEL_COLLECTOR_ENDPOINTS",
                lb_endpoints(std::slice::from_ref(&self.otel_collector)),
            ),
            ("DESCRIPTOR", quoted(&self.descriptor.to_string_lossy())),
            ("RATE_LIMIT_PER_SECOND", self.rate_limit_per_sec.to_string()),
            (
                "ANONYMOUS_RATE_LIMIT_PER_SECOND",
                self.anonymous_rate_limit_per_sec.to_string(),
            ),
            ("LISTENER_TLS", listener_tls(self.tls.as_ref())),
        ]
    }

    /// The template with every placeholder filled.
    ///
    /// # Panics
    /// If the template has a placeholder this code does not fill, or lacks one it does: a
    /// template out of step with this code (a test renders it).
    pub fn render(&self) -> String {
        render(TEMPLATE, &self.values()).unwrap_or_else(|e| panic!("envoy template: {e}"))
    }
}

/// `template` with each `${NAME}` replaced by its value; every placeholder must have a value and
/// every value a placeholder.
fn render(template: &str, values: &[(&'static str, String)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut used = vec![false; values.len()];
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("an unclosed placeholder at {:?}", &rest[at..]))?;
        let name = &after[..end];
        let index = values
            .iter()
            .position(|(n, _)| *n == name)
            .ok_or_else(|| format!("no value for the placeholder ${{{name}}}"))?;
        used[index] = true;
        out.push_str(&values[index].1);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if let Some(unused) = used.iter().position(|u| !u) {
        return Err(format!("no placeholder ${{{}}}", values[unused].0));
    }
    Ok(out)
}

/// Writes the rendered configuration (whole or not at all: through a file beside it, renamed).
#[allow(
    clippy::print_stdout,
    reason = "the command writes the config or says where it went"
)]
pub fn envoy_config(args: &EnvoyConfigArgs) -> Result<(), anyhow::Error> {
    let cwd = std::env::current_dir()?;
    let config = args.config(&cwd)?;
    let yaml = config.render();
    if args.out.as_os_str() == "-" {
        print!("{yaml}");
        return Ok(());
    }
    let out = cwd.join(&args.out);
    let partial = out.with_extension("yaml.partial");
    std::fs::write(&partial, &yaml)
        .and_then(|()| std::fs::rename(&partial, &out))
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            anyhow::anyhow!("cannot write {}: {e}", out.display())
        })?;
    println!(
        "wrote {}: listener {}:{}{}, gateway {}, console {}, auth {}, descriptor {}",
        out.display(),
        config.listen.host,
        config.listen.port,
        if config.tls.is_some() {
            " (TLS)"
        } else {
            " (plaintext)"
        },
        list(&config.gateways),
        list(&config.consoles),
        list(&config.auths),
        config.descriptor.display()
    );
    if !config.descriptor.is_file() {
        println!(
            "note: {} does not exist here yet; write it with `chamberlain descriptor-set --out {}`",
            config.descriptor.display(),
            config.descriptor.display()
        );
    }
    Ok(())
}

fn list(endpoints: &[Endpoint]) -> String {
    endpoints
        .iter()
        .map(|e| format!("{}:{}", e.host, e.port))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::{Endpoint, EnvoyConfigArgs, render};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: EnvoyConfigArgs,
    }

    fn args(flags: &[&str]) -> EnvoyConfigArgs {
        Cli::try_parse_from(std::iter::once("envoy-config").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn the_template_renders_with_every_placeholder_filled() {
        let yaml = args(&[]).config(Path::new("/srv/api")).unwrap().render();
        assert!(!yaml.contains("${"), "a placeholder is left");
        assert!(yaml.contains(r#"socket_address: { address: "0.0.0.0", port_value: 8080 }"#));
        assert!(yaml.contains(r#"socket_address: { address: "127.0.0.1", port_value: 9901 }"#));
        assert!(yaml.contains(r#"proto_descriptor: "/srv/api/chamberlain.pb""#));
        assert!(yaml.contains("max_tokens: 2000"));
        assert!(yaml.contains(
            r#"- lb_endpoints: [{ endpoint: { address: { socket_address: { address: "127.0.0.1", port_value: 50051 } } } }]"#
        ));
    }

    #[test]
    fn tls_needs_both_files_and_puts_them_on_the_listener() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        // Any readable files stand in for the PEM files: Envoy reads them, not this command.
        let yaml = args(&["--tls-cert", "Cargo.toml", "--tls-key", "src/envoy.rs"])
            .config(here)
            .unwrap()
            .render();
        assert!(yaml.contains("envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"));
        assert!(yaml.contains(&format!(
            "certificate_chain: {{ filename: \"{}/Cargo.toml\" }}",
            here.display()
        )));
        assert!(yaml.contains("alpn_protocols: [h2, http/1.1]"));
        let plaintext = args(&[]).config(here).unwrap().render();
        assert!(!plaintext.contains("transport_socket"));

        let alone = args(&["--tls-cert", "Cargo.toml"])
            .config(here)
            .unwrap_err();
        assert!(alone.to_string().contains("--tls-key"), "{alone}");
        assert!(
            alone.to_string().contains("CHAMBERLAIN_ENVOY_TLS_KEY"),
            "{alone}"
        );
        let missing = args(&["--tls-cert", "nope.pem", "--tls-key", "Cargo.toml"])
            .config(here)
            .unwrap_err();
        assert!(missing.to_string().contains("--tls-cert"), "{missing}");
        assert!(missing.to_string().contains("nope.pem"), "{missing}");
    }

    #[test]
    fn several_replicas_become_several_endpoints_and_names_stay_names() {
        let yaml = args(&[
            "--gateway",
            "gateway-1:50051, gateway-2:50051",
            "--auth",
            "[::1]:50052",
            "--otel-collector",
            "otel-collector:4317",
            "--descriptor",
            "/etc/envoy/chamberlain.pb",
            "--rate-limit-per-sec",
            "7",
        ])
        .config(Path::new("/elsewhere"))
        .unwrap()
        .render();
        assert!(yaml.contains(r#"{ address: "gateway-1", port_value: 50051 } } } }, { endpoint: { address: { socket_address: { address: "gateway-2", port_value: 50051 }"#));
        assert!(yaml.contains(r#"address: "::1", port_value: 50052"#));
        assert!(yaml.contains(r#"address: "otel-collector", port_value: 4317"#));
        assert!(yaml.contains(r#"proto_descriptor: "/etc/envoy/chamberlain.pb""#));
        assert!(yaml.contains("tokens_per_fill: 7"));
    }

    #[test]
    fn a_bad_address_is_refused_naming_its_flag_and_variable() {
        for (flag, value, var, why) in [
            (
                "--gateway",
                "gateway",
                "CHAMBERLAIN_ENVOY_GATEWAY",
                "not host:port",
            ),
            (
                "--auth",
                "auth:0",
                "CHAMBERLAIN_ENVOY_AUTH",
                "port must be 1-65535",
            ),
            (
                "--listen",
                "a b:80",
                "CHAMBERLAIN_ENVOY_LISTEN",
                "neither an IP address",
            ),
            (
                "--admin",
                "x}, evil: {y:1",
                "CHAMBERLAIN_ENVOY_ADMIN",
                "neither an IP address",
            ),
            (
                "--gateway",
                " , ",
                "CHAMBERLAIN_ENVOY_GATEWAY",
                "at least one",
            ),
        ] {
            let err = args(&[flag, value])
                .config(Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(flag) && err.contains(var) && err.contains(why),
                "{flag} {value:?}: {err}"
            );
        }
    }

    #[test]
    fn endpoints_parse_as_addresses_or_names() {
        assert_eq!(
            Endpoint::parse("auth:50052").unwrap(),
            Endpoint {
                host: "auth".into(),
                port: 50052
            }
        );
        assert!(Endpoint::parse("[not-v6]:1").is_err());
        assert!(Endpoint::parse("-bad:1").is_err());
        assert!(Endpoint::parse("host:99999").is_err());
    }

    #[test]
    fn a_placeholder_without_a_value_or_a_value_without_a_placeholder_is_an_error() {
        assert_eq!(render("a ${X} b", &[("X", "1".into())]).unwrap(), "a 1 b");
        assert!(
            render("a ${Y}", &[("X", "1".into())])
                .unwrap_err()
                .contains("${Y}")
        );
        assert!(
            render("a", &[("X", "1".into())])
                .unwrap_err()
                .contains("${X}")
        );
        assert!(render("a ${X", &[("X", "1".into())]).is_err());
    }
}
