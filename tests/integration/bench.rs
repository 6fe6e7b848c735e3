//! `latchkey bench`: populate a database, load a server, report errors.

use serde_json::Value;

use crate::common::*;

fn run_json(args: &[&str]) -> (bool, Value) {
    let output = run_cli(args, "");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or(Value::Null);
    (output.status.success(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn populate_then_load_every_scenario_without_errors() {
    let (_dir, data) = data_dir();
    let db = data.join("latchkey.redb").display().to_string();
    let tokens = data.join("tokens.txt").display().to_string();
    let populated = run_cli(
        &[
            "bench",
            "--populate",
            "--data",
            &db,
            "--users",
            "50",
            "--sessions",
            "200",
            "--sample-tokens",
            "8",
            "--tokens",
            &tokens,
            "--secret",
            SECRET,
            "--argon2-memory",
            "64",
            "--argon2-iterations",
            "1",
        ],
        "",
    );
    assert!(
        populated.status.success(),
        "{}",
        String::from_utf8_lossy(&populated.stderr)
    );
    assert_eq!(std::fs::read_to_string(&tokens).unwrap().lines().count(), 8);

    let server = ServerProcess::start(&data, &["--secret", SECRET, "--reuse-grace", "0"]);
    let url = server.client.base().to_string();
    let common = [
        "--url",
        url.as_str(),
        "--duration",
        "1s",
        "--connections",
        "4",
        "--users",
        "50",
        "--json",
    ];
    for scenario in ["refresh", "profile", "login", "mixed"] {
        let mut args = vec!["bench", "--scenario", scenario];
        args.extend(common);
        let (ok, report) = run_json(&args);
        assert!(ok, "{scenario}: {report}");
        assert!(
            report["total"]["requests"].as_u64().unwrap() > 0,
            "{scenario}: {report}"
        );
        assert_eq!(
            report["non_2xx"],
            serde_json::json!({}),
            "{scenario}: {report}"
        );
        assert_eq!(report["chain_breaks"], 0, "{scenario}: {report}");
    }
    // Chains started from the populated sessions' tokens.
    let mut args = vec![
        "bench",
        "--scenario",
        "refresh",
        "--tokens",
        tokens.as_str(),
    ];
    args.extend(common);
    let (ok, report) = run_json(&args);
    assert!(
        ok && report["by_endpoint"]["refresh"]["requests"]
            .as_u64()
            .unwrap()
            > 0,
        "{report}"
    );

    // Those tokens are now rotated: starting from them again breaks every
    // chain, and the bench says so and fails.
    let (ok, report) = run_json(&args);
    assert!(!ok, "{report}");
    assert!(report["chain_breaks"].as_u64().unwrap() >= 4, "{report}");
    assert!(report["non_2xx"]["401"].as_u64().unwrap() >= 4, "{report}");
}
