//! The README's flag tables, checked against the clap definitions they
//! describe (help, completions and the man page come from those too), and
//! the shipped completions and man page.

use std::collections::BTreeMap;

use clap::CommandFactory;

use crate::common::*;
use latchkey::cli::Cli;

/// `--flag` → default (`None` for `—` or `off`) of the table under `heading`.
fn readme_table(heading: &str) -> BTreeMap<String, Option<String>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading} in the README"));
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for line in readme[start..].lines().skip(1) {
        if line.starts_with("| `--") {
            in_table = true;
            let cells: Vec<&str> = line.split(" | ").collect();
            // A row may hold several flags and as many defaults:
            // `--sessions N`, `--sample-tokens N`, `--role R` | `0`, `0`, `1`.
            let flags = cells[0].trim_start_matches("| ").split(", ");
            let defaults: Vec<&str> = cells[1].split(", ").collect();
            for (index, flag) in flags.enumerate() {
                let flag = flag.trim_matches('`').split(' ').next().unwrap();
                let default = defaults.get(index).unwrap_or(&defaults[0]);
                let default = default.trim().trim_matches('`');
                let default = (!matches!(default, "—" | "off")).then(|| default.to_string());
                rows.insert(flag.to_string(), default);
            }
        } else if in_table && !line.starts_with('|') {
            break;
        }
    }
    rows
}

/// `--flag` → default of a clap command's own (non-global, non-help) flags.
fn clap_flags(command: &clap::Command, globals: bool) -> BTreeMap<String, Option<String>> {
    command
        .get_arguments()
        .filter(|arg| arg.is_global_set() == globals)
        .filter_map(|arg| {
            let long = arg.get_long()?;
            if matches!(long, "help" | "version") {
                return None;
            }
            let default = arg
                .get_default_values()
                .first()
                .map(|v| v.to_string_lossy().to_string())
                .filter(|v| v != "false");
            Some((format!("--{long}"), default))
        })
        .collect()
}

fn compare(heading: &str, clap: BTreeMap<String, Option<String>>) {
    let readme = readme_table(heading);
    let names = |m: &BTreeMap<String, Option<String>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&readme), names(&clap), "flags under {heading}");
    for (flag, default) in &clap {
        // Where clap has a default, the README says the same one.
        if let Some(default) = default {
            assert_eq!(
                readme[flag].as_deref(),
                Some(default.as_str()),
                "default of {flag} under {heading}"
            );
        }
    }
}

#[test]
fn the_readme_flag_tables_match_the_clap_definitions() {
    let cli = Cli::command();
    compare("### Global flags (all commands)", clap_flags(&cli, true));
    let serve = cli.find_subcommand("serve").unwrap();
    compare("### `latchkey serve`", clap_flags(serve, false));
    let bench = cli.find_subcommand("bench").unwrap();
    compare("### `latchkey bench`", clap_flags(bench, false));
}

#[test]
fn completions_and_the_man_page_are_generated() {
    // `output()` reads stdout while the command runs: a completion script
    // is larger than a pipe's buffer.
    let run = |args: &[&str]| {
        std::process::Command::new(binary())
            .args(args)
            .output()
            .unwrap()
    };
    for shell in ["bash", "zsh", "fish"] {
        let output = run(&["completions", shell]);
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(
            script.contains("serve") && script.contains("registration"),
            "{shell}"
        );
    }
    let man = run(&["man"]);
    assert!(man.status.success());
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(".TH latchkey") && page.contains("serve"));
    // Every subcommand's flags, not only the global ones.
    for flag in [
        "metrics\\-bind",
        "registration\\-limit",
        "skip\\-invalid",
        "populate",
    ] {
        assert!(page.contains(flag), "{flag} missing from the man page");
    }
}

/// The README shows the verifiers that the signing tests run, verbatim.
#[test]
fn the_readme_verifier_snippets_are_the_tested_files() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for file in ["verify.py", "verify.mjs", "verify.rs"] {
        let path = format!("{}/tests/verifiers/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            readme.contains(&format!("\n{text}```")),
            "the README's copy of tests/verifiers/{file} differs from the file"
        );
    }
}
