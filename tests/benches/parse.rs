//! Parser benchmark: the JSON and Prometheus bodies a chamber answers, parsed and every
//! detector's value looked up, as the worker does per poll. Prints, per body shape, the time per
//! body (median of 15 rounds) and the throughput in MB/s.
//!
//! ```sh
//! cargo bench -p chamberlain-tests --bench parse
//! ```
//! `CHAMBERLAIN_BENCH_SMOKE=1` runs each shape a few times only.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::hint::black_box;
use std::time::Instant;

use chamberlain_domain::parse::{JsonDocument, JsonPointer, MetricSelector, PrometheusDocument};

struct Shape {
    name: &'static str,
    body: String,
    json_keys: Vec<JsonPointer>,
    prometheus_keys: Vec<MetricSelector>,
}

/// The simulator's JSON body with `detectors` detectors.
fn simulator_json(detectors: usize) -> Shape {
    let items: Vec<String> = (0..detectors)
        .map(|i| format!(r#"{{"name":"d{i}","unit":"C","value":{}.{i}25}}"#, 20 + i))
        .collect();
    Shape {
        name: if detectors == 8 {
            "json, 8 detectors (simulator)"
        } else {
            "json, 64 detectors"
        },
        body: format!(
            r#"{{"chamber":"c1","t":1733300000000,"detectors":[{}]}}"#,
            items.join(",")
        ),
        json_keys: (0..detectors)
            .map(|i| JsonPointer::parse(&format!("/detectors/{i}/value")).unwrap())
            .collect(),
        prometheus_keys: Vec::new(),
    }
}

/// A flat object of `keys` keys, 8 of them looked up.
fn flat_json(keys: usize) -> Shape {
    let items: Vec<String> = (0..keys)
        .map(|i| format!(r#""sensor_{i}":{i}.5"#))
        .collect();
    Shape {
        name: "json, flat object of 1,000 keys",
        body: format!("{{{}}}", items.join(",")),
        json_keys: (0..8)
            .map(|i| JsonPointer::parse(&format!("/sensor_{}", i * 100)).unwrap())
            .collect(),
        prometheus_keys: Vec::new(),
    }
}

fn prometheus(detectors: usize) -> Shape {
    let mut body = String::from("# TYPE chamber_detector_value gauge\n");
    for i in 0..detectors {
        body.push_str(&format!(
            "chamber_detector_value{{detector=\"d{i}\"}} {i}.25\n"
        ));
    }
    Shape {
        name: "prometheus, 8 detectors (simulator)",
        body,
        json_keys: Vec::new(),
        prometheus_keys: (0..detectors)
            .map(|i| {
                MetricSelector::parse(&format!("chamber_detector_value{{detector=\"d{i}\"}}"))
                    .unwrap()
            })
            .collect(),
    }
}

fn once(shape: &Shape) -> usize {
    let mut found = 0;
    if shape.prometheus_keys.is_empty() {
        let document = JsonDocument::parse(shape.body.as_bytes()).expect("a JSON body");
        for key in &shape.json_keys {
            found += usize::from(document.value(key).is_ok());
        }
    } else {
        let document = PrometheusDocument::parse(shape.body.as_bytes()).expect("a text body");
        for key in &shape.prometheus_keys {
            found += usize::from(document.value(key).is_ok());
        }
    }
    found
}

fn main() {
    let smoke = std::env::var("CHAMBERLAIN_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let shapes = [
        simulator_json(8),
        simulator_json(64),
        flat_json(1_000),
        prometheus(8),
    ];
    println!(
        "{:<40} {:>8} {:>12} {:>10}",
        "body", "bytes", "per body", "MB/s"
    );
    for shape in &shapes {
        let expected = shape.json_keys.len().max(shape.prometheus_keys.len());
        assert_eq!(
            once(shape),
            expected,
            "{}: every key finds its value",
            shape.name
        );
        // Enough iterations per round for ~20 ms.
        let start = Instant::now();
        let mut calibrate = 0u32;
        while start.elapsed().as_millis() < 20 && calibrate < 1_000_000 {
            black_box(once(black_box(shape)));
            calibrate += 1;
        }
        let per_round = if smoke { 3 } else { calibrate.max(1) };
        let rounds = if smoke { 1 } else { 15 };
        let mut times: Vec<f64> = (0..rounds)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..per_round {
                    black_box(once(black_box(shape)));
                }
                start.elapsed().as_secs_f64() / f64::from(per_round)
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{:<40} {:>8} {:>9.2} µs {:>10.1}",
            shape.name,
            shape.body.len(),
            median * 1e6,
            shape.body.len() as f64 / median / 1e6
        );
    }
}
