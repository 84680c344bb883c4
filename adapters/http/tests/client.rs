//! `HttpChamberClient` against real sockets: test chambers on loopback addresses, the egress
//! guard, hostile chambers, keep-alive and pacing.

mod support;

use std::time::Duration;

use chamberlain_domain::ports::{ChamberClient, FetchError};
use chamberlain_http::{HttpChamberClient, HttpClientConfig};
use support::{SLOT_MS, TestChamber, get, response, within};

/// The test chambers listen on 127.0.0.2, the one loopback address the test client allows.
const CHAMBER_IP: &str = "127.0.0.2";

fn config() -> HttpClientConfig {
    HttpClientConfig::default()
        .with_egress_allow("127.0.0.2/32")
        .expect("valid allowlist")
}

fn client() -> HttpChamberClient {
    HttpChamberClient::new(&config())
}

/// A client that may also reach 127.0.0.1: to show that a 127.0.0.1 chamber is alive and
/// received nothing else.
fn witness() -> HttpChamberClient {
    let config = config()
        .with_egress_allow("127.0.0.2/32,127.0.0.1/32")
        .unwrap();
    HttpChamberClient::new(&config)
}

const SECOND: Duration = Duration::from_secs(1);
const GENEROUS: Duration = Duration::from_secs(10);

fn blocked(result: Result<chamberlain_domain::ports::FetchedResponse, FetchError>) -> String {
    match result {
        Err(FetchError::Blocked { reason }) => reason,
        other => panic!("expected Blocked, got {other:?}"),
    }
}

/// Only the witness's request reached `chamber`, over one connection.
async fn received_only_the_witness(chamber: &TestChamber) {
    let answer = within(witness().fetch(&get(&chamber.url("/witness"), GENEROUS)))
        .await
        .expect("the witness reaches the chamber");
    assert_eq!(answer.status, 200);
    let targets: Vec<String> = chamber.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/witness"]);
    assert_eq!(chamber.accepts(), 1);
}

#[tokio::test]
async fn a_json_chamber_answers_and_receives_the_slot() {
    let body = br#"{"detectors":[{"name":"temp","value":21.5}]}"#;
    let chamber = TestChamber::answering(
        CHAMBER_IP,
        200,
        &[("content-type", "application/json")],
        body,
    )
    .await;
    let mut request = get(&chamber.url("/state?unit=c"), GENEROUS);
    request.attempt = 2;

    let answer = within(client().fetch(&request)).await.unwrap();

    assert_eq!(answer.status, 200);
    assert!(answer.is_success());
    assert_eq!(answer.body, body);
    let seen = chamber.requests();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/state?unit=c");
    assert_eq!(
        seen.header("chamberlain-slot"),
        Some(SLOT_MS.to_string().as_str())
    );
    assert_eq!(seen.header("chamberlain-attempt"), Some("2"));
    assert_eq!(
        seen.header("user-agent"),
        Some(concat!("chamberlain/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(seen.header("host"), Some(chamber.addr.to_string().as_str()));
}

#[tokio::test]
async fn an_error_status_is_an_answer_not_an_error() {
    let chamber = TestChamber::answering(CHAMBER_IP, 503, &[], b"warming up").await;
    let answer = within(client().fetch(&get(&chamber.url("/"), GENEROUS)))
        .await
        .unwrap();
    assert_eq!(answer.status, 503);
    assert!(!answer.is_success());
    assert_eq!(answer.body, b"warming up");
}

#[tokio::test]
async fn loopback_is_refused_unless_allowlisted() {
    let chamber = TestChamber::answering("127.0.0.1", 200, &[], b"{}").await;

    let reason = blocked(within(client().fetch(&get(&chamber.url("/"), GENEROUS))).await);
    assert_eq!(
        reason,
        "127.0.0.1 is loopback; allowlist it with CHAMBERLAIN_EGRESS_ALLOW to reach it"
    );
    // Allowlisted, the same chamber is polled (and had seen nothing before).
    received_only_the_witness(&chamber).await;
}

#[tokio::test]
async fn the_cloud_metadata_address_is_refused() {
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[fe80::a9fe:a9fe]/",
    ] {
        let reason = blocked(within(client().fetch(&get(url, GENEROUS))).await);
        assert!(reason.contains("link-local"), "{url}: {reason}");
    }
}

#[tokio::test]
async fn an_ipv4_mapped_loopback_literal_is_refused() {
    let chamber = TestChamber::answering("127.0.0.1", 200, &[], b"{}").await;
    let url = format!("http://[::ffff:127.0.0.1]:{}/", chamber.addr.port());

    let reason = blocked(within(client().fetch(&get(&url, GENEROUS))).await);

    assert_eq!(
        reason,
        "::ffff:127.0.0.1 carries 127.0.0.1 (IPv4-mapped), which is loopback; allowlist \
         127.0.0.1 with CHAMBERLAIN_EGRESS_ALLOW to reach it"
    );
    received_only_the_witness(&chamber).await;
}

#[tokio::test]
async fn a_private_address_is_refused_without_connecting() {
    // A connection attempt to 10.1.2.3 could only end in Connect or Timeout; Blocked comes
    // from the guard, before any packet.
    let config = config()
        .with_connect_timeout(Duration::from_secs(30))
        .unwrap();
    let client = HttpChamberClient::new(&config);
    for url in [
        "http://10.1.2.3:8080/state",
        "http://[::ffff:a01:203]:8080/state",
    ] {
        let reason = blocked(within(client.fetch(&get(url, Duration::from_secs(60)))).await);
        assert!(
            reason.contains("10.1.2.3") && reason.contains("private"),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused() {
    let chamber = TestChamber::answering("127.0.0.1", 200, &[], b"{}").await;
    let url = format!("http://localhost:{}/", chamber.addr.port());

    let reason = blocked(within(client().fetch(&get(&url, GENEROUS))).await);

    assert!(reason.starts_with("localhost: "), "{reason}");
    assert!(reason.contains("is loopback"), "{reason}");
    received_only_the_witness(&chamber).await;
}

#[tokio::test]
async fn redirects_are_answers_and_their_location_is_never_contacted() {
    let target = TestChamber::answering("127.0.0.1", 200, &[], b"secret").await;
    let location = target.url("/secret");
    let redirect = TestChamber::answering(
        CHAMBER_IP,
        302,
        &[("location", location.as_str())],
        b"moved",
    )
    .await;

    // Neither the guard's refusal of 127.0.0.1 nor its allowance changes that: no client
    // follows.
    for client in [client(), witness()] {
        let answer = within(client.fetch(&get(&redirect.url("/"), GENEROUS)))
            .await
            .unwrap();
        assert_eq!(answer.status, 302);
        assert_eq!(answer.body, b"moved");
    }
    received_only_the_witness(&target).await;
}

#[tokio::test]
async fn a_chamber_that_never_answers_times_out() {
    let chamber = TestChamber::start(CHAMBER_IP, |mut conn| async move {
        conn.read_request().await;
        conn.until_closed().await;
    })
    .await;

    let result = within(client().fetch(&get(&chamber.url("/"), Duration::from_millis(300)))).await;

    assert_eq!(result, Err(FetchError::Timeout));
    assert_eq!(chamber.requests().len(), 1);
}

#[tokio::test]
async fn a_trickling_chamber_times_out_in_total() {
    // One byte every 100 ms keeps the connection busy far more often than the 1 s timeout:
    // only a bound on the whole request ends it.
    for trickle_head in [false, true] {
        let chamber = TestChamber::start(CHAMBER_IP, move |mut conn| async move {
            conn.read_request().await;
            let head: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n";
            let (at_once, trickled): (&[u8], &[u8]) = if trickle_head {
                (b"", head)
            } else {
                (head, b"")
            };
            if conn.write(at_once).await.is_err() {
                return;
            }
            let mut ticker = tokio::time::interval(Duration::from_millis(100));
            for &byte in trickled.iter().chain(std::iter::repeat(&b'1')) {
                ticker.tick().await;
                if conn.write(&[byte]).await.is_err() {
                    return;
                }
            }
        })
        .await;

        let result = within(client().fetch(&get(&chamber.url("/"), SECOND))).await;

        assert_eq!(
            result,
            Err(FetchError::Timeout),
            "trickle_head: {trickle_head}"
        );
    }
}

#[tokio::test]
async fn a_flooding_chamber_is_cut_at_the_cap() {
    const FLOOD: u64 = 50_000_000;
    let cap = 64 * 1024;
    let chamber = TestChamber::start(CHAMBER_IP, |mut conn| async move {
        conn.read_request().await;
        // No length: the body runs until the connection closes.
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
        if conn.write(head).await.is_ok() {
            conn.flood(FLOOD).await;
        }
    })
    .await;
    let client = HttpChamberClient::new(&config().with_body_cap(cap).unwrap());

    let result = within(client.fetch(&get(&chamber.url("/"), GENEROUS))).await;

    assert_eq!(
        result,
        Err(FetchError::TooLarge {
            limit_bytes: cap as u64
        })
    );
    // The client read the cap and at most one more frame, then hung up: beyond that, the
    // chamber could write only what the socket buffers of both ends hold (about 4 MB on
    // loopback here), never the whole 50 MB. (The unit tests of `read_capped` count the
    // frames pulled exactly.)
    let written = chamber.body_bytes_written().await;
    assert!(
        written < 16 * 1024 * 1024,
        "the chamber wrote {written} bytes"
    );
}

#[tokio::test]
async fn an_announced_length_past_the_cap_is_refused_at_once() {
    let chamber = TestChamber::start(CHAMBER_IP, |mut conn| async move {
        conn.read_request().await;
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 50000000\r\n\r\n";
        if conn.write(head).await.is_ok() {
            conn.until_closed().await; // and never sends the body
        }
    })
    .await;

    let result = within(client().fetch(&get(&chamber.url("/"), GENEROUS))).await;

    assert_eq!(
        result,
        Err(FetchError::TooLarge {
            limit_bytes: 1024 * 1024
        })
    );
}

#[tokio::test]
async fn garbage_is_a_protocol_error() {
    let chamber = TestChamber::start(CHAMBER_IP, |mut conn| async move {
        conn.read_request().await;
        if conn.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await.is_ok() {
            conn.until_closed().await;
        }
    })
    .await;

    let result = within(client().fetch(&get(&chamber.url("/"), GENEROUS))).await;

    assert!(
        matches!(result, Err(FetchError::Protocol { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_closed_port_is_a_connection_failure() {
    let port = {
        let listener = std::net::TcpListener::bind((CHAMBER_IP, 0)).unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://{CHAMBER_IP}:{port}/");

    let result = within(client().fetch(&get(&url, GENEROUS))).await;

    match result {
        Err(e @ FetchError::Connect { .. }) => assert!(e.is_transient()),
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn https_to_a_plaintext_chamber_fails_its_handshake() {
    let chamber = TestChamber::start(CHAMBER_IP, |mut conn| async move {
        conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .await
            .ok();
        conn.until_closed().await;
    })
    .await;
    let url = format!("https://{}/", chamber.addr);

    let result = within(client().fetch(&get(&url, GENEROUS))).await;

    match result {
        Err(FetchError::Connect { reason }) => assert!(reason.contains("TLS"), "{reason}"),
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let chamber = TestChamber::answering(CHAMBER_IP, 200, &[], b"{\"ok\":true}").await;
    let client = client();

    for _ in 0..3 {
        let answer = within(client.fetch(&get(&chamber.url("/"), GENEROUS)))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
    }

    let connections: Vec<usize> = chamber.requests().iter().map(|r| r.connection).collect();
    assert_eq!(connections, [0, 0, 0]);
    assert_eq!(chamber.accepts(), 1);
}

async fn max_overlap(client: &HttpChamberClient, hold: Duration) -> usize {
    let chamber = TestChamber::start(CHAMBER_IP, move |mut conn| async move {
        let ok = response(200, &[], b"{}");
        while conn.read_request().await.is_some() {
            conn.hold_until_overlap(hold).await;
            if conn.write(&ok).await.is_err() {
                return;
            }
        }
    })
    .await;
    let request = get(&chamber.url("/"), GENEROUS);
    let fetch = || within(client.fetch(&request));

    let results = tokio::join!(fetch(), fetch(), fetch(), fetch());

    for result in [results.0, results.1, results.2, results.3] {
        assert_eq!(result.unwrap().status, 200);
    }
    assert_eq!(chamber.requests().len(), 4);
    chamber.max_in_flight()
}

#[tokio::test]
async fn one_request_per_host_at_a_time_never_overlaps() {
    let paced = HttpChamberClient::new(&config().with_max_concurrent_per_host(1).unwrap());
    // Each request is held up to 50 ms for a second one to arrive: none does.
    assert_eq!(max_overlap(&paced, Duration::from_millis(50)).await, 1);

    // The same chamber without pacing sees requests overlap (released as soon as they do).
    assert!(max_overlap(&client(), GENEROUS).await >= 2);
}

#[tokio::test]
async fn waiting_for_the_host_rate_counts_against_the_timeout() {
    let chamber = TestChamber::answering(CHAMBER_IP, 200, &[], b"{}").await;
    let paced = HttpChamberClient::new(&config().with_requests_per_second_per_host(1).unwrap());
    let request = get(&chamber.url("/"), Duration::from_millis(200));

    assert_eq!(within(paced.fetch(&request)).await.unwrap().status, 200);
    // One request per second: the next one's turn comes after its 200 ms timeout.
    assert_eq!(
        within(paced.fetch(&request)).await,
        Err(FetchError::Timeout)
    );
    assert_eq!(chamber.requests().len(), 1);
}

#[tokio::test]
async fn https_works_with_the_operators_root_and_only_with_it() {
    let chamber = support::TlsChamber::start(CHAMBER_IP).await;
    let url = format!("https://{}/state", chamber.addr);
    let trusting = HttpChamberClient::new(
        &config()
            .with_tls_root_certificates_pem(include_str!("fixtures/ca.pem"))
            .unwrap(),
    );

    let answer = within(trusting.fetch(&get(&url, GENEROUS))).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, support::TLS_BODY);

    // With the Mozilla roots only, the lab's certificate is not trusted.
    match within(client().fetch(&get(&url, GENEROUS))).await {
        Err(FetchError::Connect { reason }) => {
            assert!(reason.contains("TLS handshake"), "{reason}");
            assert!(reason.contains("certificate"), "{reason}");
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    assert_eq!(
        chamber.handshakes.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn endless_headers_are_a_protocol_error() {
    let chamber = TestChamber::start(CHAMBER_IP, |mut conn| async move {
        conn.read_request().await;
        if conn.write(b"HTTP/1.1 200 OK\r\n").await.is_err() {
            return;
        }
        let line = format!("x-padding: {}\r\n", "a".repeat(1000));
        while conn.write(line.as_bytes()).await.is_ok() {}
    })
    .await;

    let result = within(client().fetch(&get(&chamber.url("/"), GENEROUS))).await;

    assert!(
        matches!(result, Err(FetchError::Protocol { .. })),
        "{result:?}"
    );
}
