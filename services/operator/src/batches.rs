//! `chamberlain batches`: named runs in a section.

use chamberlain_proto::v1::{self, batch_service_client::BatchServiceClient};
use clap::Subcommand;

use crate::connection::Client;
use crate::failure::Done;
use crate::pages::{Limit, all_pages};
use crate::render::{self, Output, ts};

#[derive(Debug, Subcommand)]
pub enum BatchesCommand {
    /// List batches, optionally of one section.
    List {
        #[arg(long)]
        section: Option<String>,
        #[command(flatten)]
        limit: Limit,
    },
    /// Start a batch in a section (readings taken while it is open belong to it).
    Start {
        #[arg(long)]
        section: String,
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// End an open batch.
    End { id: String },
}

fn print_batches(output: Output, items: &[v1::Batch]) {
    render::list(
        output,
        items,
        &["ID", "NAME", "SECTION", "STARTED", "ENDED"],
        |b| {
            vec![
                b.id.clone(),
                b.name.clone(),
                b.section_id.clone(),
                ts(b.started_at.as_ref()),
                ts(b.ended_at.as_ref()),
            ]
        },
    );
}

pub(crate) async fn run(client: &Client, command: BatchesCommand) -> Done {
    let mut api = BatchServiceClient::new(client.transport.clone());
    let output = client.output;
    let batch = match command {
        BatchesCommand::List { section, limit } => {
            let section = section.unwrap_or_default();
            let items = all_pages(limit.get(), |page| {
                let mut api = api.clone();
                let section_id = section.clone();
                async move {
                    let r = api
                        .list_batches(v1::ListBatchesRequest {
                            page: Some(page),
                            section_id,
                        })
                        .await?
                        .into_inner();
                    Ok((r.batches, r.next_page_token))
                }
            })
            .await?;
            print_batches(output, &items);
            return Ok(());
        }
        BatchesCommand::Start {
            section,
            name,
            description,
        } => api
            .start_batch(v1::StartBatchRequest {
                section_id: section,
                name,
                description,
            })
            .await?
            .into_inner(),
        BatchesCommand::End { id } => api
            .end_batch(v1::EndBatchRequest { id })
            .await?
            .into_inner(),
    };
    render::one(
        output,
        &batch,
        vec![
            ("id", batch.id.clone()),
            ("name", batch.name.clone()),
            ("section", batch.section_id.clone()),
            ("description", batch.description.clone()),
            ("started", ts(batch.started_at.as_ref())),
            ("ended", ts(batch.ended_at.as_ref())),
        ],
    );
    Ok(())
}
