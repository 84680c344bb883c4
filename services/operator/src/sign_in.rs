//! `chamberlain sign-in`: a session token for an e-mail address and password. An address with
//! accounts in several organizations names one with `--organization`; without it, a person at a
//! terminal is asked which, and a script gets the choices in the error.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use chamberlain_proto::v1::{self, auth_service_client::AuthServiceClient};
use tonic::Code;
use tonic_types::StatusExt;

use crate::connection::Client;
use crate::failure::{Done, Failure, exit};
use crate::render::{self, ts};

/// The `google.rpc.ErrorInfo` reason of a sign-in that must name its organization.
const ORGANIZATION_REQUIRED: &str = "ORGANIZATION_REQUIRED";

#[derive(Debug, clap::Args)]
pub struct SignInArgs {
    /// Your e-mail address.
    #[arg(long)]
    email: String,
    /// The organization to sign in to (its name or id), when your address has accounts in
    /// several.
    #[arg(long)]
    organization: Option<String>,
    /// Your password; read from CHAMBERLAIN_PASSWORD, else from the first line of stdin.
    #[arg(long, env = "CHAMBERLAIN_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

/// An organization the server offered to choose from: (id, name), by name.
fn choices(status: &tonic::Status) -> Option<Vec<(String, String)>> {
    let info = status.get_details_error_info()?;
    if status.code() != Code::FailedPrecondition || info.reason != ORGANIZATION_REQUIRED {
        return None;
    }
    let mut choices: Vec<(String, String)> = info.metadata.into_iter().collect();
    choices.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    Some(choices)
}

fn read_line(prompt: &str) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Asks a person at a terminal which organization; `None` when nobody can answer.
fn ask(choices: &[(String, String)]) -> Result<Option<String>, Failure> {
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    eprintln!("Your address has accounts in several organizations:");
    for (i, (_, name)) in choices.iter().enumerate() {
        eprintln!("  {}. {name}", i + 1);
    }
    let answer = read_line("Sign in to (number): ")?;
    match answer.trim().parse::<usize>() {
        Ok(n) if (1..=choices.len()).contains(&n) => Ok(Some(choices[n - 1].0.clone())),
        _ => Err(Failure::usage(format!(
            "no organization numbered {:?}",
            answer.trim()
        ))),
    }
}

pub(crate) async fn run(client: &Client, args: SignInArgs) -> Done {
    let password = match args.password {
        Some(p) => p,
        None => read_line("Password: ")?,
    };
    let mut api = AuthServiceClient::new(client.transport.clone());
    let mut organization = args.organization.unwrap_or_default();
    let reply = loop {
        let request = v1::SignInRequest {
            email: args.email.clone(),
            password: password.clone(),
            organization: organization.clone(),
        };
        match api.sign_in(request).await {
            Ok(reply) => break reply.into_inner(),
            Err(status) => {
                let Some(choices) = choices(&status).filter(|_| organization.is_empty()) else {
                    return Err(status.into());
                };
                match ask(&choices)? {
                    Some(id) => organization = id,
                    None => {
                        return Err(Failure {
                            exit: exit::USAGE,
                            message: format!(
                                "{} has accounts in several organizations; choose one with \
                                 --organization: {}",
                                args.email,
                                choices
                                    .iter()
                                    .map(|(id, name)| format!("{name} ({id})"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        });
                    }
                }
            }
        }
    };
    render::one(
        client.output,
        &reply,
        vec![
            ("TOKEN", reply.token.clone()),
            ("EXPIRES", ts(reply.expires_at.as_ref())),
        ],
    );
    Ok(())
}
