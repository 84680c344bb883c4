//! `chamberlain detectors`: a chamber's detectors, with alias, unit and plausible range.

use chamberlain_proto::v1::{self, chamber_service_client::ChamberServiceClient};
use clap::Subcommand;

use crate::connection::Client;
use crate::failure::{Done, Failure};
use crate::parse::detector_spec;
use crate::render::{self, num};

#[derive(Debug, Subcommand)]
pub enum DetectorsCommand {
    /// List a chamber's detectors.
    List { chamber: String },
    /// Add a detector to a chamber: `key=name[:unit]`.
    Add {
        chamber: String,
        spec: String,
        #[arg(long)]
        alias: Option<String>,
        /// Values below are stored as corrupted.
        #[arg(long, allow_negative_numbers = true)]
        min: Option<f64>,
        /// Values above are stored as corrupted.
        #[arg(long, allow_negative_numbers = true)]
        max: Option<f64>,
    },
    /// Change a detector's name, alias, unit or plausible range.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        alias: Option<String>,
        #[arg(long)]
        unit: Option<String>,
        #[arg(long, allow_negative_numbers = true)]
        min: Option<f64>,
        #[arg(long, allow_negative_numbers = true)]
        max: Option<f64>,
    },
    /// Remove a detector and its readings.
    Remove { id: String },
}

pub(crate) async fn run(client: &Client, command: DetectorsCommand) -> Done {
    let mut api = ChamberServiceClient::new(client.transport.clone());
    let output = client.output;
    let detector = match command {
        DetectorsCommand::List { chamber } => {
            let c = api
                .get_chamber(v1::GetChamberRequest { id: chamber })
                .await?
                .into_inner();
            render::detectors(output, &c.detectors);
            return Ok(());
        }
        DetectorsCommand::Add {
            chamber,
            spec,
            alias,
            min,
            max,
        } => {
            let mut detector = detector_spec(&spec).map_err(Failure::usage)?;
            detector.alias = alias.unwrap_or_default();
            (detector.min, detector.max) = (min, max);
            api.add_detector(v1::AddDetectorRequest {
                chamber_id: chamber,
                detector: Some(detector),
            })
            .await?
            .into_inner()
        }
        DetectorsCommand::Update {
            id,
            name,
            alias,
            unit,
            min,
            max,
        } => api
            .update_detector(v1::UpdateDetectorRequest {
                id,
                name,
                alias,
                unit,
                min,
                max,
            })
            .await?
            .into_inner(),
        DetectorsCommand::Remove { id } => {
            api.remove_detector(v1::RemoveDetectorRequest { id: id.clone() })
                .await?;
            render::done(output, "removed detector", &id);
            return Ok(());
        }
    };
    render::one(
        output,
        &detector,
        vec![
            ("id", detector.id.clone()),
            ("chamber", detector.chamber_id.clone()),
            ("name", detector.name.clone()),
            ("alias", detector.alias.clone()),
            ("key", detector.key.clone()),
            ("unit", detector.unit.clone()),
            ("min", num(detector.min)),
            ("max", num(detector.max)),
        ],
    );
    Ok(())
}
