//! The README's walk-through, run as a reader would: its `$ curl …` commands, copied into a
//! shell (real curl) against the system `make run` starts (local scheduler, worker, gateway with
//! `make run`'s settings), each answer holding every line the README shows, in order. What
//! differs from run to run matches loosely: the operation id (taken from the first answer),
//! times, the worker's name, and `…`.

use std::time::{Duration, Instant};

use regex::Regex;

mod common;
use common::*;

/// The README's first ```text block after "## A walk-through": (command, lines shown).
fn walk_through() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let section = readme
        .split("## A walk-through")
        .nth(1)
        .expect("a walk-through section");
    let block = section
        .split("```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a text block");
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        match line.strip_prefix("$ ") {
            Some(command) => steps.push((command.to_string(), Vec::new())),
            None if line.trim().is_empty() => {}
            None => steps
                .last_mut()
                .expect("output after a command")
                .1
                .push(line.to_string()),
        }
    }
    steps
}

/// Stands for the id of the operation the walk-through starts, until its answer tells it.
const NEW_ID: char = '\u{1}';

/// A line as the README shows it, as a pattern: literal but for what differs between runs.
fn pattern(shown: &str) -> Regex {
    let variable = [
        // RFC 3339 times.
        (
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z",
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z",
        ),
        // The worker's name (its host name, or its process id).
        (r"worker-\d+", r#"[^"]+"#),
    ];
    let mut out = String::from("^");
    let mut rest = shown;
    'scan: while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('…') {
            out.push_str(".*");
            rest = after;
            continue;
        }
        if let Some(after) = rest.strip_prefix(NEW_ID) {
            out.push_str("[0-9a-f]{32}");
            rest = after;
            continue;
        }
        for (shown, matches) in &variable {
            let re = Regex::new(&format!("^{shown}")).expect("pattern");
            if let Some(m) = re.find(rest) {
                out.push_str(matches);
                rest = &rest[m.end()..];
                continue 'scan;
            }
        }
        let c = rest.chars().next().expect("a character");
        out.push_str(&regex::escape(&c.to_string()));
        rest = &rest[c.len_utf8()..];
    }
    out.push('$');
    Regex::new(&out).expect("a pattern")
}

/// The lines of `answer` that match `shown`, in order: where the first missing one is, if any.
fn first_missing(shown: &[String], answer: &str) -> Option<String> {
    let mut lines = answer.lines().map(|l| l.trim_end_matches('\r'));
    for s in shown {
        let p = pattern(s);
        if !lines.by_ref().any(|l| p.is_match(l)) {
            return Some(s.clone());
        }
    }
    None
}

async fn sh(command: &str) -> String {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .await
        .expect("sh");
    assert!(out.status.success(), "`{command}` failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walk_through_gives_what_the_readme_shows() {
    let steps = walk_through();
    assert!(steps.len() >= 4, "start, status, wait, result: {steps:?}");
    let (_scheduler, endpoint) = local_scheduler().await;
    let _worker = worker_in_process(&endpoint);
    let port = free_port();
    let admin = free_port();
    // `make run`'s gateway, on free ports.
    let _gateway = spawn(
        "gateway",
        &[
            ("ENDPOINT", endpoint.clone()),
            ("TASKHUB", "default".into()),
            ("GATEWAY__LISTEN", format!("127.0.0.1:{port}")),
            ("GATEWAY__ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
            ("GATEWAY__DRAIN_DELAY_SECONDS", "0".into()),
            ("GATEWAY__AUTH", "none".into()),
            (
                "GATEWAY__PUBLIC_BASE_URL",
                format!("http://localhost:{port}"),
            ),
        ],
        port,
    )
    .await;
    let here = |text: &str| text.replace("localhost:8000", &format!("localhost:{port}"));
    let id_shown = Regex::new(r"/api/status/([0-9a-f]{32})")
        .expect("pattern")
        .captures(&steps[1].0)
        .expect("the status command names the id")[1]
        .to_string();
    let mut id = None::<String>;
    for (command, shown) in &steps {
        let with_id = |text: &str| match &id {
            Some(id) => here(text).replace(&id_shown, id),
            None => here(text).replace(&id_shown, &NEW_ID.to_string()),
        };
        let command = with_id(command);
        let shown: Vec<String> = shown.iter().map(|s| with_id(s)).collect();
        // A reader types more slowly than this test: an answer that shows an earlier moment
        // (NotStarted before Running) is asked again, for a few seconds.
        let deadline = Instant::now() + Duration::from_secs(5);
        let answer = loop {
            let answer = sh(&command).await;
            match first_missing(&shown, &answer) {
                None => break answer,
                Some(line) if Instant::now() > deadline => {
                    panic!("`{command}`\nshould show\n{line}\nbut answered\n{answer}")
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        if id.is_none() {
            let v: serde_json::Value =
                serde_json::from_str(answer.lines().last().expect("a body")).expect("a JSON body");
            id = v["id"].as_str().map(str::to_string);
            assert!(id.is_some(), "{answer}");
        }
    }
}

#[test]
fn a_shown_line_matches_its_own_kind_only() {
    let p = pattern(
        r#"{"id":"x","status":"Running","created_at":"2026-12-06T11:13:13.141Z","worker":"worker-15005","links":{…}}"#,
    );
    assert!(p.is_match(r#"{"id":"x","status":"Running","created_at":"2027-01-01T00:00:00.5Z","worker":"gw-pod-7","links":{"a":1}}"#));
    assert!(!p.is_match(r#"{"id":"x","status":"NotStarted","created_at":"2027-01-01T00:00:00.5Z","worker":"w","links":{}}"#));
    assert_eq!(
        first_missing(
            &["HTTP/1.1 202 Accepted".into(), "retry-after: 1".into()],
            "HTTP/1.1 202 Accepted\r\nx: y\r\nretry-after: 1\r\n"
        ),
        None
    );
    assert!(
        first_missing(
            &["retry-after: 1".into(), "HTTP/1.1 202 Accepted".into()],
            "HTTP/1.1 202 Accepted\r\nretry-after: 1\r\n"
        )
        .is_some(),
        "in order"
    );
}
