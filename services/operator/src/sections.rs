//! `chamberlain sections`: the sections of the caller's organization.

use chamberlain_proto::v1::{self, section_service_client::SectionServiceClient};
use clap::Subcommand;

use crate::connection::Client;
use crate::failure::Done;
use crate::pages::{Limit, all_pages};
use crate::render::{self, Output, ts};

#[derive(Debug, Subcommand)]
pub enum SectionsCommand {
    /// List the sections of your organization.
    List(Limit),
    /// Create a section.
    Add {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show one section.
    Show { id: String },
    /// Rename a section or change its description.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete an empty section.
    Delete { id: String },
}

fn print_sections(output: Output, items: &[v1::Section]) {
    render::list(
        output,
        items,
        &["ID", "NAME", "DESCRIPTION", "CREATED"],
        |s| {
            vec![
                s.id.clone(),
                s.name.clone(),
                s.description.clone(),
                ts(s.created_at.as_ref()),
            ]
        },
    );
}

fn print_section(output: Output, s: &v1::Section) {
    render::one(
        output,
        s,
        vec![
            ("id", s.id.clone()),
            ("name", s.name.clone()),
            ("description", s.description.clone()),
            ("created", ts(s.created_at.as_ref())),
        ],
    );
}

pub(crate) async fn run(client: &Client, command: SectionsCommand) -> Done {
    let mut api = SectionServiceClient::new(client.transport.clone());
    let output = client.output;
    match command {
        SectionsCommand::List(limit) => {
            let items = all_pages(limit.get(), |page| {
                let mut api = api.clone();
                async move {
                    let r = api
                        .list_sections(v1::ListSectionsRequest { page: Some(page) })
                        .await?
                        .into_inner();
                    Ok((r.sections, r.next_page_token))
                }
            })
            .await?;
            print_sections(output, &items);
        }
        SectionsCommand::Add { name, description } => {
            let s = api
                .create_section(v1::CreateSectionRequest { name, description })
                .await?
                .into_inner();
            print_section(output, &s);
        }
        SectionsCommand::Show { id } => {
            let s = api
                .get_section(v1::GetSectionRequest { id })
                .await?
                .into_inner();
            print_section(output, &s);
        }
        SectionsCommand::Update {
            id,
            name,
            description,
        } => {
            let s = api
                .update_section(v1::UpdateSectionRequest {
                    id,
                    name,
                    description,
                })
                .await?
                .into_inner();
            print_section(output, &s);
        }
        SectionsCommand::Delete { id } => {
            api.delete_section(v1::DeleteSectionRequest { id: id.clone() })
                .await?;
            render::done(output, "deleted section", &id);
        }
    }
    Ok(())
}
