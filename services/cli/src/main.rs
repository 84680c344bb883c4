#![doc = include_str!("../README.md")]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// glibc's allocator took a third of a worker's CPU at 10,000 chambers (perf: `unlink_chunk`,
/// `_int_malloc`, `malloc_consolidate`); mimalloc's per-thread free lists do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "chamberlain",
    version,
    about = "Polls sensor chambers on time and stores every reading exactly once"
)]
struct Cli {
    /// Log lines as readable text or as one JSON object each.
    #[arg(
        long,
        global = true,
        env = "CHAMBERLAIN_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    log_format: chamberlain_compose::telemetry::LogFormatArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The services: standalone, migrate, simulate, scheduler, worker, alerter, gateway, auth,
    /// bootstrap, descriptor-set.
    #[command(flatten)]
    Service(chamberlain_compose::Command),
    /// The operator commands against a running server: sections, chambers, detectors,
    /// batches, readings, polls, tokens, users, import.
    #[command(flatten)]
    Operator(chamberlain_operator::Command),
}

fn main() -> ExitCode {
    // mimalloc asks the kernel for transparent huge pages on its arenas (MADV_HUGEPAGE), and a
    // 2 MiB page is resident whole however little of it is used: the embedded default at 5,000
    // chambers peaked at 177 MiB with them and 147 MiB without (one 20-30 s run each).
    // Best effort: a kernel without the setting keeps its default.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chamberlain: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Service(command) => {
            runtime.block_on(chamberlain_compose::run(command, cli.log_format))
        }
        // Short-lived clients: no service telemetry, their own exit codes.
        Command::Operator(command) => match runtime.block_on(chamberlain_operator::run(command)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => {
                eprintln!("chamberlain: {failure}");
                ExitCode::from(failure.exit)
            }
        },
    }
}
