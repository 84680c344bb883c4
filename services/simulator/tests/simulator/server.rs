//! Binding, routing and shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use chamberlain_simulator::{DEFAULT_BIND, Format, Simulator, SimulatorConfig, SimulatorError};
use hyper::{Method, StatusCode};
use tokio::net::TcpStream;

use crate::support::{Client, T0, fleet, start};

#[tokio::test]
async fn binds_127_0_0_2_by_default_and_not_127_0_0_1() {
    assert_eq!(DEFAULT_BIND, "127.0.0.2:0".parse::<SocketAddr>().unwrap());
    let simulator = Simulator::start(SimulatorConfig::default()).await.unwrap();
    let addr = simulator.addr();
    assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    assert_ne!(addr.port(), 0);
    assert_eq!(
        simulator.chamber_url(7, Format::Json),
        format!("http://127.0.0.2:{}/chambers/7", addr.port())
    );
    assert_eq!(
        simulator.chamber_url(7, Format::Prometheus),
        format!("http://127.0.0.2:{}/chambers/7/metrics", addr.port())
    );
    assert_eq!(
        simulator.url_pattern(Format::Json),
        format!("http://127.0.0.2:{}/chambers/{{i}}", addr.port())
    );
    // Debug stays short whatever the fleet size (it shows up in test failures).
    assert!(format!("{simulator:?}").len() < 2_000);
    let loopback_one = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port());
    assert!(TcpStream::connect(loopback_one).await.is_err());
    assert!(TcpStream::connect(addr).await.is_ok());
}

#[tokio::test]
async fn an_address_in_use_is_a_bind_error() {
    let (config, _clock) = fleet(1, 1);
    let first = start(config).await;
    let (config, _clock) = fleet(1, 1);
    let second = Simulator::start(config.bind(first.addr()).build().unwrap()).await;
    match second {
        Err(SimulatorError::Bind { addr, .. }) => assert_eq!(addr, first.addr()),
        other => panic!("expected a bind error, got {other:?}"),
    }
}

#[tokio::test]
async fn many_requests_share_one_keep_alive_connection() {
    let (config, _clock) = fleet(100, 2);
    let simulator = start(config).await;
    let mut client = Client::connect(simulator.addr()).await;
    for chamber in 0..100 {
        let answer = client
            .get(&format!("/chambers/{chamber}"), Some(T0), Some(1))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let report = simulator.report();
    assert_eq!(report.requests, 100);
    assert_eq!(report.chambers_polled, 100);
    assert_eq!(report.min_requests_per_chamber, 1);
}

#[tokio::test]
async fn unknown_paths_chambers_and_methods_are_refused() {
    let (config, _clock) = fleet(3, 1);
    let simulator = start(config).await;
    let mut client = Client::connect(simulator.addr()).await;
    for path in ["/", "/chambers", "/chambers/x", "/chambers/1/other"] {
        let answer = client.get(path, None, None).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
    }
    let answer = client.get("/chambers/3", Some(T0), None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = client
        .request(Method::POST, "/chambers/0", None, None)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    let report = simulator.report();
    assert_eq!(report.requests, 1);
    assert_eq!(report.unknown_chamber_requests, 1);
    assert_eq!(report.chambers_polled, 0);
}

#[tokio::test]
async fn shutdown_stops_listening_and_returns_the_final_report() {
    let (config, _clock) = fleet(2, 1);
    let simulator = start(config).await;
    let addr = simulator.addr();
    let mut client = Client::connect(addr).await;
    client.get("/chambers/1", Some(T0), Some(1)).await;
    let report = simulator.shutdown().await;
    assert_eq!(report.requests, 1);
    assert!(TcpStream::connect(addr).await.is_err());
}
