//! `chamberlain users`: who the token belongs to, and the users of the organization.

use chamberlain_proto::v1::{self, user_service_client::UserServiceClient};
use clap::Subcommand;

use crate::connection::Client;
use crate::failure::Done;
use crate::pages::{Limit, all_pages};
use crate::render::{self, Output, ts};

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Who the token belongs to.
    Me,
    /// The users of your organization.
    List(Limit),
    /// Add a user (admins only).
    Add {
        email: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: String,
        /// Their display name.
        #[arg(long)]
        name: String,
        /// Their first password (to sign in); read from CHAMBERLAIN_NEW_USER_PASSWORD so it
        /// stays out of the shell history.
        #[arg(long, env = "CHAMBERLAIN_NEW_USER_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Change a user's role (admins only).
    SetRole { id: String, role: String },
    /// Delete a user (admins only).
    Delete { id: String },
}

fn print_user(output: Output, u: &v1::User) {
    render::one(
        output,
        u,
        vec![
            ("id", u.id.clone()),
            ("email", u.email.clone()),
            ("name", u.display_name.clone()),
            ("role", u.role.clone()),
            ("organization", u.organization_id.clone()),
            ("disabled", u.disabled.to_string()),
            ("created", ts(u.created_at.as_ref())),
        ],
    );
}

pub(crate) async fn run(client: &Client, command: UsersCommand) -> Done {
    let mut api = UserServiceClient::new(client.transport.clone());
    let output = client.output;
    let user = match command {
        UsersCommand::Me => api.who_am_i(v1::WhoAmIRequest {}).await?.into_inner(),
        UsersCommand::List(limit) => {
            let items = all_pages(limit.get(), |page| {
                let mut api = api.clone();
                async move {
                    let r = api
                        .list_users(v1::ListUsersRequest { page: Some(page) })
                        .await?
                        .into_inner();
                    Ok((r.users, r.next_page_token))
                }
            })
            .await?;
            render::list(
                output,
                &items,
                &["ID", "EMAIL", "NAME", "ROLE", "DISABLED", "CREATED"],
                |u| {
                    vec![
                        u.id.clone(),
                        u.email.clone(),
                        u.display_name.clone(),
                        u.role.clone(),
                        u.disabled.to_string(),
                        ts(u.created_at.as_ref()),
                    ]
                },
            );
            return Ok(());
        }
        UsersCommand::Add {
            email,
            role,
            name,
            password,
        } => api
            .create_user(v1::CreateUserRequest {
                email,
                display_name: name,
                role,
                password,
            })
            .await?
            .into_inner(),
        UsersCommand::SetRole { id, role } => api
            .set_user_role(v1::SetUserRoleRequest { id, role })
            .await?
            .into_inner(),
        UsersCommand::Delete { id } => {
            api.delete_user(v1::DeleteUserRequest { id: id.clone() })
                .await?;
            render::done(output, "deleted user", &id);
            return Ok(());
        }
    };
    print_user(output, &user);
    Ok(())
}
