#![doc = include_str!("../README.md")]
#![allow(
    clippy::print_stdout,
    reason = "a command-line client reports on stdout"
)]

/// `println!` for replies, except that a closed stdout (`| head`) ends the command quietly
/// instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::render::write_out(format_args!($($arg)*))
    };
}

mod connection;
mod failure;
mod pages;
mod parse;
mod render;

mod batches;
mod chambers;
mod detectors;
mod import;
mod polls;
mod readings;
mod sections;
mod sign_in;
mod tokens;
mod users;

pub use batches::BatchesCommand;
pub use chambers::ChambersCommand;
pub use connection::ClientArgs;
pub use detectors::DetectorsCommand;
pub use failure::{Failure, exit};
pub use import::ImportArgs;
pub use polls::PollsCommand;
pub use readings::ReadingsCommand;
pub use sections::SectionsCommand;
pub use sign_in::SignInArgs;
pub use tokens::TokensCommand;
pub use users::UsersCommand;

// Rustdoc only: clap takes a flattened enum's doc comment for the `about` of the command it is
// flattened into, which would change the binary's help.
#[cfg_attr(
    doc,
    doc = "The operator commands, to flatten into the binary's own subcommands \
           (`#[command(flatten)] Operator(chamberlain_operator::Command)`)."
)]
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Sections of your organization (against a running server: --server, --token).
    Sections {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: SectionsCommand,
    },
    /// Chambers: register, list, show, pause, resume, set the interval, delete.
    Chambers {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ChambersCommand,
    },
    /// A chamber's detectors.
    Detectors {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: DetectorsCommand,
    },
    /// Batches: named runs in a section.
    Batches {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: BatchesCommand,
    },
    /// Readings: follow them live, query a range, export CSV or JSON.
    Readings {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ReadingsCommand,
    },
    /// The poll ledger and coverage.
    Polls {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: PollsCommand,
    },
    /// API tokens.
    Tokens {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Users of your organization.
    Users {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// A session token for your e-mail address and password (printed; use it as --token or
    /// CHAMBERLAIN_TOKEN).
    SignIn {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: SignInArgs,
    },
    /// Register the chambers of a CSV file, all of them or none, with a progress bar.
    Import {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: ImportArgs,
    },
}

/// Connects to the server and runs one operator command, printing its reply on stdout.
///
/// # Errors
/// A [`Failure`] carrying the exit code (see [`exit`]) and the message to print.
pub async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Sections { client, command } => {
            sections::run(&client.connect().await?, command).await
        }
        Command::Chambers { client, command } => {
            chambers::run(&client.connect().await?, command).await
        }
        Command::Detectors { client, command } => {
            detectors::run(&client.connect().await?, command).await
        }
        Command::Batches { client, command } => {
            batches::run(&client.connect().await?, command).await
        }
        Command::Readings { client, command } => {
            readings::run(&client.connect().await?, command).await
        }
        Command::Polls { client, command } => polls::run(&client.connect().await?, command).await,
        Command::Tokens { client, command } => tokens::run(&client.connect().await?, command).await,
        Command::Users { client, command } => users::run(&client.connect().await?, command).await,
        Command::Import { client, args } => import::run(&client.connect().await?, args).await,
        Command::SignIn { client, args } => sign_in::run(&client.connect().await?, args).await,
    }
}
