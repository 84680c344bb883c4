//! `run_cli`: prints where it listens, serves until told to stop, prints the report.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chamberlain_simulator::{SimulateArgs, SimulatorError, run_cli_with_output};
use clap::Parser;
use hyper::StatusCode;

use crate::support::{Client, T0, wait_until};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

fn args(flags: &[&str]) -> SimulateArgs {
    Cli::try_parse_from(std::iter::once("simulate").chain(flags.iter().copied()))
        .unwrap()
        .args
}

/// Output that the test can read while `run_cli` writes it.
#[derive(Debug, Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn run_cli_prints_the_address_serves_and_prints_the_report_at_shutdown() {
    let output = Output::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn({
        let mut output = output.clone();
        let args = args(&[
            "--chambers",
            "5",
            "--detectors",
            "2",
            "--interval-ms",
            "1000",
        ]);
        async move {
            run_cli_with_output(
                args,
                async {
                    let _ = stopped.await;
                },
                &mut output,
            )
            .await
        }
    });
    wait_until("the address is printed", || output.text().contains('\n')).await;
    let text = output.text();
    let addr: SocketAddr = text
        .strip_prefix("simulator listening on ")
        .and_then(|rest| {
            rest.split(':')
                .take(2)
                .collect::<Vec<_>>()
                .join(":")
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no address in {text:?}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.2");
    assert!(
        text.contains(&format!("http://{addr}/chambers/{{i}}/metrics")),
        "{text}"
    );

    let mut client = Client::connect(addr).await;
    let answer = client.get("/chambers/4", Some(T0), Some(1)).await;
    assert_eq!(answer.status, StatusCode::OK);

    stop.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.requests, 1);
    assert_eq!(report.chambers, 5);
    let text = output.text();
    assert!(
        text.contains("simulator report: 5 chambers x 2 detectors"),
        "{text}"
    );
}

#[tokio::test]
async fn run_cli_refuses_a_bad_setting_before_binding() {
    let mut output = Output::default();
    let result = run_cli_with_output(
        args(&["--detectors", "1001"]),
        std::future::ready(()),
        &mut output,
    )
    .await;
    match result {
        Err(SimulatorError::Config(error)) => {
            assert_eq!(
                error.to_string(),
                "invalid setting --detectors (CHAMBERLAIN_SIMULATE_DETECTORS): must be between 1 and 1000"
            );
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    assert_eq!(output.text(), "");
}
