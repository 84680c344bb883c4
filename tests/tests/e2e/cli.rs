//! The operator commands against a running `chamberlain standalone`: every command once, as a
//! lab operator types it, with the exit codes a script relies on; `chamberlain import` with bad
//! rows; and the import's progress bar in a pseudo-terminal.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chamberlain_tests::api_stack::free_port;
use chamberlain_tests::chamberlain_bin;
use serde_json::Value;

use crate::standalone::{Standalone, free_port_on_127_0_0_2, start_simulating};

/// A standalone server in a temp dir and the CLI pointed at it.
struct Operator {
    bin: PathBuf,
    dir: PathBuf,
    server: String,
    token: String,
    sim: u16,
    _standalone: Standalone,
}

/// One command's result.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Operator {
    fn start(label: &str, simulate: u32) -> Self {
        let dir =
            std::env::temp_dir().join(format!("chamberlain-cli-{label}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("config")).unwrap();
        let (api, sim) = (free_port(), free_port_on_127_0_0_2());
        let bin = chamberlain_bin();
        let standalone = start_simulating(&bin, &dir.join("data"), api, sim, simulate);
        let token = standalone
            .token
            .clone()
            .expect("the first start prints a token");
        let operator = Self {
            bin,
            server: format!("127.0.0.1:{api}"),
            token,
            sim,
            dir,
            _standalone: standalone,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let me = operator.run(&["users", "me"]);
            if me.code == 0 {
                assert!(me.stdout.contains("admin@localhost"), "{}", me.stdout);
                return operator;
            }
            assert!(
                Instant::now() < deadline,
                "the server never answered: {}",
                me.stderr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The CLI with only the settings given here (no config file, no other token).
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("HOME", &self.dir)
            .env_remove("CHAMBERLAIN_OUTPUT")
            .env_remove("CHAMBERLAIN_CONFIG")
            .env_remove("CHAMBERLAIN_SERVER")
            .env_remove("CHAMBERLAIN_TOKEN");
        c
    }

    fn run_as(&self, token: &str, args: &[&str]) -> Ran {
        let out = self
            .command(args)
            .env("CHAMBERLAIN_SERVER", &self.server)
            .env("CHAMBERLAIN_TOKEN", token)
            .output()
            .expect("run chamberlain");
        ran(out)
    }

    fn run(&self, args: &[&str]) -> Ran {
        self.run_as(&self.token, args)
    }

    /// Runs a command that must succeed, with `--output json`.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let r = self.run(&all);
        assert_eq!(r.code, 0, "{args:?} failed: {}", r.stderr);
        r.json()
    }

    /// Runs a command that must succeed, as a table.
    fn table(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "{args:?} failed: {}", r.stderr);
        r.stdout
    }

    /// Runs a command that must fail with `code`, its message containing every `needle`.
    fn fails(&self, code: i32, args: &[&str], needles: &[&str]) -> Ran {
        self.fails_as(&self.token.clone(), code, args, needles)
    }

    fn fails_as(&self, token: &str, code: i32, args: &[&str], needles: &[&str]) -> Ran {
        let r = self.run_as(token, args);
        assert_eq!(
            r.code, code,
            "{args:?}: stdout {} stderr {}",
            r.stdout, r.stderr
        );
        for n in needles {
            assert!(r.stderr.contains(n), "{args:?}: {n:?} not in {}", r.stderr);
        }
        r
    }
}

fn ran(out: Output) -> Ran {
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field} in {v}"))
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_operator_command_against_a_standalone_server() {
    let op = Operator::start("commands", 2);

    // Sections.
    let section = op.json(&["sections", "add", "hall-7", "--description", "floor 7"]);
    let s = str_of(&section, "id").to_owned();
    assert_eq!(str_of(&section, "description"), "floor 7");
    assert!(op.table(&["sections", "list"]).contains("hall-7"));
    let renamed = op.json(&["sections", "update", &s, "--name", "hall-seven"]);
    assert_eq!(str_of(&renamed, "name"), "hall-seven");
    assert_eq!(
        str_of(&op.json(&["sections", "show", &s]), "name"),
        "hall-seven"
    );
    let spare = str_of(&op.json(&["sections", "add", "spare"]), "id").to_owned();
    assert!(
        op.table(&["sections", "delete", &spare])
            .contains("deleted section")
    );
    op.fails(4, &["sections", "show", &spare], &["not found"]);

    // Chambers and detectors.
    let url = format!("http://127.0.0.2:{}/chambers/0", op.sim);
    let chamber = op.json(&[
        "chambers",
        "add",
        "--section",
        &s,
        "--name",
        "oven",
        "--url",
        &url,
        "--interval",
        "2s",
        "--detector",
        "/detectors/0/value=temp:°C",
        "--detector",
        "/detectors/1/value=rh:%",
    ]);
    let c = str_of(&chamber, "id").to_owned();
    assert_eq!(str_of(&chamber, "interval"), "2s");
    assert_eq!(chamber["detectors"].as_array().unwrap().len(), 2);
    let listed = op.json(&["chambers", "list", "--section", &s]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(str_of(&listed[0], "id"), c);
    let shown = op.table(&["chambers", "show", &c]);
    assert!(
        shown.contains("oven") && shown.contains("temp") && shown.contains("°C"),
        "{shown}"
    );
    let paused = op.json(&["chambers", "pause", &c]);
    assert_eq!(str_of(&paused, "state"), "CHAMBER_STATE_PAUSED");
    let paused_list = op.json(&["chambers", "list", "--state", "paused"]);
    assert_eq!(paused_list.as_array().unwrap().len(), 1);
    assert_eq!(
        str_of(&op.json(&["chambers", "resume", &c]), "state"),
        "CHAMBER_STATE_ACTIVE"
    );
    assert_eq!(
        str_of(
            &op.json(&["chambers", "set-interval", &c, "5s"]),
            "interval"
        ),
        "5s"
    );
    assert_eq!(
        str_of(
            &op.json(&["chambers", "update", &c, "--name", "oven-b"]),
            "name"
        ),
        "oven-b"
    );
    let detector = op.json(&[
        "detectors",
        "add",
        &c,
        "/detectors/2/value=co2:ppm",
        "--min",
        "0",
        "--max",
        "5000",
    ]);
    let d = str_of(&detector, "id").to_owned();
    assert_eq!(detector["max"].as_f64(), Some(5000.0));
    assert_eq!(
        op.json(&["detectors", "list", &c])
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        str_of(
            &op.json(&["detectors", "update", &d, "--unit", "ppm"]),
            "unit"
        ),
        "ppm"
    );
    assert_eq!(op.json(&["detectors", "remove", &d])["id"], d.as_str());
    assert_eq!(
        op.json(&["detectors", "list", &c])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Batches.
    let batch = op.json(&["batches", "start", "--section", &s, "run-1"]);
    let b = str_of(&batch, "id").to_owned();
    assert!(batch["ended_at"].is_null(), "{batch}");
    assert_eq!(
        op.json(&["batches", "list", "--section", &s])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(op.json(&["batches", "end", &b])["ended_at"].is_string());

    // Readings of a simulated chamber: query, tail, export.
    let simulated = op
        .json(&["chambers", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|c| str_of(c, "name") == "sim-0000")
        .map(|c| str_of(c, "id").to_owned())
        .expect("the simulated chambers are registered");
    let mut readings = Vec::new();
    until("two slots of readings are stored", || {
        readings = op
            .json(&["readings", "query", "--chamber", &simulated, "--from", "1h"])
            .as_array()
            .unwrap()
            .clone();
        let slots: std::collections::BTreeSet<&str> =
            readings.iter().map(|r| str_of(r, "slot")).collect();
        slots.len() >= 3
    });
    // A closed range of whole slots, so query and exports see the same rows.
    let from = str_of(&readings[0], "slot").to_owned();
    let to = str_of(readings.last().unwrap(), "slot").to_owned();
    let range = [
        "--chamber",
        simulated.as_str(),
        "--from",
        from.as_str(),
        "--to",
        to.as_str(),
    ];
    let queried = op.json(&[&["readings", "query"][..], &range].concat());
    let n = queried.as_array().unwrap().len();
    assert!(n >= 8, "at least one slot of 8 detectors: {n}");
    let table = op.table(&[&["readings", "query"][..], &range].concat());
    assert!(
        table.contains("sim-0000") && table.contains("d0"),
        "names, not ids: {table}"
    );
    let csv = op.table(&[&["readings", "export"][..], &range].concat());
    assert_eq!(
        csv.lines().count(),
        n + 1,
        "a header and one line per reading: {csv}"
    );
    let exported = op.json(&[&["readings", "export", "--format", "json"][..], &range].concat());
    assert_eq!(exported, queried);
    let file = op.dir.join("export.csv");
    op.table(
        &[
            &["readings", "export", "--out", file.to_str().unwrap()][..],
            &range,
        ]
        .concat(),
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), csv);
    assert!(!op.dir.join("export.csv.partial").exists());
    let tail = op.run(&[
        "readings",
        "tail",
        "--chamber",
        &simulated,
        "--count",
        "1",
        "--output",
        "json",
    ]);
    assert_eq!(tail.code, 0, "{}", tail.stderr);
    let line: Value = serde_json::from_str(tail.stdout.trim()).expect("one JSON line");
    assert_eq!(str_of(&line["readings"], "chamber_id"), simulated);
    // One simulated chamber's poll (other chambers here have fewer detectors, and whichever
    // chamber's poll comes first would be the one shown).
    let tail = op.table(&["readings", "tail", "--chamber", &simulated, "--count", "1"]);
    assert!(
        tail.lines().count() >= 9,
        "a header and a poll's 8 readings: {tail}"
    );

    // The ledger.
    let polls = op.json(&["polls", "list", &simulated, "--from", "1h"]);
    assert!(
        polls
            .as_array()
            .unwrap()
            .iter()
            .any(|p| str_of(p, "outcome") == "ok"),
        "{polls}"
    );
    let coverage = op.json(&[
        "polls",
        "coverage",
        "--chamber",
        &simulated,
        "--from",
        &from,
        "--to",
        &to,
    ]);
    // proto3 JSON writes 64-bit integers as strings.
    let slots: u64 = str_of(&coverage, "slots").parse().unwrap();
    assert!(slots >= 2, "{coverage}");
    assert!(
        op.table(&["polls", "coverage", "--chamber", &simulated])
            .contains("coverage")
    );

    // Tokens: a viewer reads but cannot change; a revoked token stops working.
    let created = op.json(&[
        "tokens",
        "create",
        "dashboard",
        "--role",
        "viewer",
        "--expires-in",
        "30d",
    ]);
    let secret = str_of(&created, "secret").to_owned();
    let token_id = str_of(&created["token"], "id").to_owned();
    assert!(secret.starts_with("chm_"));
    assert_eq!(op.run_as(&secret, &["chambers", "list"]).code, 0);
    let refused = op.fails_as(
        &secret,
        3,
        &["chambers", "pause", &c],
        &["permission denied"],
    );
    assert!(
        !refused
            .stderr
            .contains("permission denied: permission denied"),
        "said once: {}",
        refused.stderr
    );
    // A token far too long is refused here, naming the setting, not as an HTTP/2 error.
    op.fails_as(
        &"chm_x".repeat(2000),
        2,
        &["chambers", "list"],
        &["--token", "CHAMBERLAIN_TOKEN"],
    );
    // A user needs a name: clap says which flag.
    op.fails(
        2,
        &["users", "add", "x@lab.test", "--role", "viewer"],
        &["--name"],
    );
    assert!(op.table(&["tokens", "list"]).contains("dashboard"));
    op.json(&["tokens", "revoke", &token_id]);
    op.fails_as(&secret, 3, &["chambers", "list"], &["not authenticated"]);

    // Users.
    let user = {
        let r = op
            .command(&[
                "users",
                "add",
                "bob@lab.test",
                "--role",
                "operator",
                "--name",
                "Bob",
                "--output",
                "json",
            ])
            .env("CHAMBERLAIN_SERVER", &op.server)
            .env("CHAMBERLAIN_TOKEN", &op.token)
            .env(
                "CHAMBERLAIN_NEW_USER_PASSWORD",
                "correct horse battery staple",
            )
            .output()
            .unwrap();
        let r = ran(r);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.json()
    };
    let u = str_of(&user, "id").to_owned();
    assert!(op.table(&["users", "list"]).contains("bob@lab.test"));
    assert_eq!(
        str_of(&op.json(&["users", "set-role", &u, "viewer"]), "role"),
        "viewer"
    );
    op.json(&["users", "delete", &u]);
    assert!(!op.table(&["users", "list"]).contains("bob@lab.test"));

    // Failures, each with its exit code and a message naming what is wrong.
    op.fails_as(
        "chm_not-a-real-token",
        3,
        &["chambers", "list"],
        &["not authenticated"],
    );
    op.fails_as("", 3, &["chambers", "list"], &["not authenticated"]);
    let unknown = uuid::Uuid::new_v4().to_string();
    op.fails(4, &["chambers", "show", &unknown], &["not found"]);
    let failed_export = op.dir.join("failed.csv");
    op.fails(
        4,
        &[
            "readings",
            "export",
            "--chamber",
            &unknown,
            "--out",
            failed_export.to_str().unwrap(),
        ],
        &["not found"],
    );
    assert!(!failed_export.exists() && !op.dir.join("failed.csv.partial").exists());
    // A section's readings leave as CSV (the API's download), not as JSON.
    op.fails(
        2,
        &[
            "readings",
            "export",
            "--section",
            &unknown,
            "--format",
            "json",
            "--from",
            "1h",
        ],
        &["--section", "CSV only"],
    );
    op.fails(
        4,
        &["readings", "export", "--section", &unknown, "--from", "1h"],
        &["section not found"],
    );
    op.fails(5, &["chambers", "show", "xyz"], &["id"]);
    op.fails(
        5,
        &[
            "chambers",
            "add",
            "--section",
            &s,
            "--name",
            "fast",
            "--url",
            &url,
            "--interval",
            "100ms",
            "--detector",
            "/t=t",
        ],
        &["interval:"],
    );
    op.fails(2, &["chambers", "set-interval", &c, "soon"], &["interval"]);
    let r = ran(op
        .command(&["chambers", "list", "--server", "127.0.0.1:1"])
        .env("CHAMBERLAIN_TOKEN", &op.token)
        .output()
        .unwrap());
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(r.stderr.contains("cannot reach the server"), "{}", r.stderr);

    // The config file stands in for the flags.
    let config = op.dir.join("config/chamberlain/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!("server = \"{}\"\ntoken = \"{}\"\n", op.server, op.token),
    )
    .unwrap();
    let r = ran(op.command(&["chambers", "show", &c]).output().unwrap());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = ran(op
        .command(&[
            "chambers",
            "list",
            "--config",
            "/nonexistent/chamberlain.toml",
        ])
        .output()
        .unwrap());
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("/nonexistent/chamberlain.toml"),
        "{}",
        r.stderr
    );

    // Deleting.
    assert_eq!(op.json(&["chambers", "delete", &c])["id"], c.as_str());
    op.fails(4, &["chambers", "show", &c], &["not found"]);
    op.fails(4, &["sections", "show", &unknown], &["not found"]);
}

fn write_csv(dir: &Path, name: &str, rows: &[String]) -> PathBuf {
    let path = dir.join(name);
    let mut text = String::from("section,name,url,format,interval,timeout,detectors\n");
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn an_import_with_bad_rows_names_their_lines_and_creates_nothing() {
    let op = Operator::start("import", 1);
    op.json(&["sections", "add", "hall-b"]);
    let url = format!("http://127.0.0.2:{}/chambers/0", op.sim);
    let good = |name: &str| {
        format!("hall-b,{name},{url},json,5s,,/detectors/0/value=temp:°C;/detectors/1/value=rh:%")
    };
    let bad = write_csv(
        &op.dir,
        "bad.csv",
        &[
            good("oven-1"),
            "hall-b,oven-2,ftp://10.0.0.1/,json,5s,,/t=temp".into(),
            good("oven-3"),
            good("oven-1"),
            "hall-b,oven-5,http://10.0.0.1/,json,100ms,,/t=temp".into(),
            "hall-b,oven-6,http://10.0.0.1/,json,5s,,no-slash=temp".into(),
        ],
    );
    let path = bad.to_str().unwrap();
    let r = op.fails(
        5,
        &["import", path],
        &[
            "4 of 6 rows refused",
            "nothing was imported",
            "line 3: url",
            "line 5: name",
            "line 6: interval",
            "line 7: detectors",
        ],
    );
    assert!(
        !r.stderr.contains("line 2:") && !r.stderr.contains("line 4:"),
        "{}",
        r.stderr
    );
    let names = |op: &Operator| -> Vec<String> {
        let mut n: Vec<String> = op
            .json(&["chambers", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|c| str_of(c, "name").to_owned())
            .filter(|n| n.starts_with("oven"))
            .collect();
        n.sort();
        n
    };
    assert!(names(&op).is_empty(), "nothing half-imported");

    // Rows the CLI itself cannot read stop it before anything is sent.
    let local = write_csv(
        &op.dir,
        "local.csv",
        &[
            good("oven-7"),
            format!("nowhere,oven-8,{url},json,5s,,/t=t"),
            format!("hall-b,oven-9,{url},json,5 parsecs,,/t=t"),
        ],
    );
    op.fails(
        5,
        &["import", local.to_str().unwrap()],
        &[
            "line 3: section",
            "no section named \"nowhere\"",
            "line 4: interval",
        ],
    );
    assert!(names(&op).is_empty());
    let typo = op.dir.join("typo.csv");
    std::fs::write(&typo, "section,name,url,intervall,detectors\n").unwrap();
    op.fails(
        2,
        &["import", typo.to_str().unwrap()],
        &["unknown column \"intervall\""],
    );

    // --continue-on-error: the good rows are created, the others listed by line.
    let report = op.json(&["import", path, "--continue-on-error"]);
    assert_eq!(report["created"], 2);
    let lines: Vec<u64> = report["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![3, 5, 6, 7]);
    assert_eq!(names(&op), vec!["oven-1", "oven-3"]);

    // A clean file, all at once.
    let clean = write_csv(
        &op.dir,
        "clean.csv",
        &(0..50)
            .map(|i| good(&format!("oven-x{i:02}")))
            .collect::<Vec<_>>(),
    );
    assert!(
        op.table(&["import", clean.to_str().unwrap()])
            .contains("imported 50 chambers")
    );
    assert_eq!(names(&op).len(), 52);
}

/// Runs the CLI in a pseudo-terminal and returns everything it drew there, with its exit code.
fn in_terminal(op: &Operator, args: &[&str]) -> (i32, String) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("a pseudo-terminal");
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let path = PathBuf::from(name.to_str().unwrap());
    let size = rustix::termios::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&master, size).unwrap();
    let terminal = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap()
    };
    let mut child = op
        .command(args)
        .env("CHAMBERLAIN_SERVER", &op.server)
        .env("CHAMBERLAIN_TOKEN", &op.token)
        .env("TERM", "xterm-256color")
        .stdin(terminal())
        .stdout(terminal())
        .stderr(terminal())
        .spawn()
        .unwrap();
    let mut reader = std::fs::File::from(master);
    let drawn = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // Ends with EIO once the child has exited and no one holds the terminal open.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), drawn.join().unwrap())
}

#[test]
fn a_ten_thousand_row_import_shows_its_progress_in_a_terminal() {
    let op = Operator::start("progress", 1);
    op.json(&["sections", "add", "warehouse"]);
    let rows: Vec<String> = (0..10_000)
        .map(|i| format!("warehouse,cold-{i:05},http://10.9.{}.{}/state,json,60s,,/t=temperature:°C;/rh=humidity:%", i / 250, i % 250))
        .collect();
    let file = write_csv(&op.dir, "fleet.csv", &rows);
    let (code, drawn) = in_terminal(&op, &["import", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{drawn}");
    assert!(
        drawn.contains("/10000 rows"),
        "a progress bar was drawn: {drawn}"
    );
    assert!(drawn.contains("imported 10000 chambers"), "{drawn}");
    let frames = drawn.matches("/10000 rows").count();
    eprintln!("import of 10,000 rows: {frames} progress frames drawn");
    assert_eq!(
        op.json(&["chambers", "list", "--limit", "10001"])
            .as_array()
            .unwrap()
            .len(),
        10_001
    );
}
