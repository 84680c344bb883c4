//! `chamberlain tokens`: list, create and revoke API tokens.

use chamberlain_proto::v1::{self, auth_service_client::AuthServiceClient};
use clap::Subcommand;

use crate::connection::Client;
use crate::failure::Done;
use crate::pages::{Limit, all_pages};
use crate::parse::parse_duration;
use crate::render::{self, ts};

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Your API tokens (admins: the organization's).
    List(Limit),
    /// Create an API token; its secret is printed once.
    Create {
        name: String,
        /// admin, operator or viewer (at most your own role; default: your role).
        #[arg(long, default_value = "")]
        role: String,
        /// How long it is valid (e.g. 30d; default: the server's default).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Revoke a token: it stops working on its next call.
    Revoke { id: String },
}

pub(crate) async fn run(client: &Client, command: TokensCommand) -> Done {
    let mut api = AuthServiceClient::new(client.transport.clone());
    let output = client.output;
    match command {
        TokensCommand::List(limit) => {
            let items = all_pages(limit.get(), |page| {
                let mut api = api.clone();
                async move {
                    let r = api
                        .list_api_tokens(v1::ListApiTokensRequest { page: Some(page) })
                        .await?
                        .into_inner();
                    Ok((r.tokens, r.next_page_token))
                }
            })
            .await?;
            render::list(
                output,
                &items,
                &[
                    "ID",
                    "NAME",
                    "ROLE",
                    "CREATED",
                    "EXPIRES",
                    "LAST USED",
                    "REVOKED",
                ],
                |t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.role.clone(),
                        ts(t.created_at.as_ref()),
                        ts(t.expires_at.as_ref()),
                        ts(t.last_used_at.as_ref()),
                        ts(t.revoked_at.as_ref()),
                    ]
                },
            );
        }
        TokensCommand::Create {
            name,
            role,
            expires_in,
        } => {
            let r = api
                .create_api_token(v1::CreateApiTokenRequest {
                    name,
                    role,
                    expires_in: expires_in
                        .map(|e| parse_duration("--expires-in", &e))
                        .transpose()?,
                })
                .await?
                .into_inner();
            let token = r.token.clone().unwrap_or_default();
            render::one(
                output,
                &r,
                vec![
                    ("id", token.id.clone()),
                    ("name", token.name.clone()),
                    ("role", token.role.clone()),
                    ("expires", ts(token.expires_at.as_ref())),
                    ("secret (shown once)", r.secret.clone()),
                ],
            );
        }
        TokensCommand::Revoke { id } => {
            api.revoke_api_token(v1::RevokeApiTokenRequest { id: id.clone() })
                .await?;
            render::done(output, "revoked token", &id);
        }
    }
    Ok(())
}
