//! The Python client package (`proto/python`, installed into `.venv` by
//! `scripts/install-client.sh`) against a real server: the workflows of its wrapper and its
//! command line, checked from the JSON report of tests/python/client_check.py.

use alps_system_tests::{ServerDirs, builtin_plugin, install_plugin, path_str, start_server, venv_python};
use serde_json::{Value, json};

#[test]
fn the_python_client_creates_adds_trains_ranks_and_predicts() {
    let dirs = ServerDirs::new();
    install_plugin(&builtin_plugin(), dirs.plugins.path(), "builtin.so");
    let (_server, grpc) = start_server(&dirs, &[]);
    let work = tempfile::tempdir().unwrap();
    let report = venv_python(&["tests/python/client_check.py", "--grpc", &grpc, "--workdir", path_str(work.path())]);
    let report: Value = serde_json::from_str(&report).unwrap_or_else(|e| panic!("{e}: {report}"));
    assert_eq!(report["created"], json!({ "id": "shades", "classes": ["dark", "light"], "version": "untrained" }));
    assert_eq!(report["added"], json!([12, 0, 12]), "a folder added twice is stored once");
    assert_eq!(report["trained"], json!({ "version": "v1", "percent": 100.0, "bar": true }));
    let ranked = report["ranked"].as_array().unwrap();
    assert_eq!(ranked.len(), 3);
    let scores: Vec<f64> = ranked.iter().map(|r| r[1].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "most informative first: {scores:?}");
    assert!(ranked.iter().all(|r| r[0].as_str().unwrap().starts_with("item")), "{ranked:?}");
    assert_eq!(report["predicted"], json!(["dark", "light"]));
    assert_eq!(report["bad_id"], "INVALID_ARGUMENT");
    assert!(report["flat_folder"].as_str().unwrap().contains("<class name>"), "{}", report["flat_folder"]);
    assert_eq!(report["raw_stub"], json!(["shades"]), "the raw stubs reach every RPC");
    assert_eq!(report["unreadable"]["ranked"], 5, "the readable pool is still ranked");
    assert!(report["unreadable"]["warning"].as_str().unwrap().contains("broken.png"), "{}", report["unreadable"]);
    let failed = report["training_failed"].as_str().unwrap();
    assert!(failed.starts_with("FAILED_PRECONDITION") && failed.contains("at least 2 classes"), "{failed}");
    assert_eq!(report["cli_rank"]["code"], 0);
    assert_eq!(report["cli_rank"]["lines"].as_array().unwrap().len(), 2);
    assert_eq!(report["cli_full"]["code"], 0, "{}", report["cli_full"]);
    let full = report["cli_full"]["stdout"].as_str().unwrap();
    assert!(full.contains("(full fine-tuning"), "{full}");
    let digits = &report["cli_digits"];
    assert_eq!(digits["codes"], json!([0, 0, 0]), "{digits}");
    assert_eq!(digits["folders"], json!(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]), "{digits}");
    assert!(digits["stdout"].as_str().unwrap().contains("inserted 40,"), "the 40 digits added: {digits}");
    // `examples` counts per class, and with --list names each one, ordered by external id.
    let examples = &report["cli_examples"];
    assert_eq!(examples["codes"], json!([0, 0]), "{examples}");
    assert_eq!(examples["counted"], "12 labelled examples (dark 6, light 6)", "{examples}");
    let listed = examples["listed"].as_array().unwrap();
    assert_eq!(listed.len(), 12, "{examples}");
    let ids: Vec<&str> = listed.iter().map(|line| line[0].as_str().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ordered: {ids:?}");
    assert!(listed.iter().all(|line| line[2].as_str().unwrap().len() == 64), "{examples}");
    assert_eq!(examples["listed_total"], examples["counted"], "the count goes to stderr with --list");
    // `versions` newest first with the served one starred; `activate` rolls back; `predict`.
    let versions = &report["cli_versions"];
    assert_eq!(versions["codes"], json!([0, 0, 0, 0]), "{versions}");
    let lines = |key: &str| -> Vec<String> {
        versions[key].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect()
    };
    let (before, after) = (lines("before"), lines("after"));
    assert_eq!(before.len(), 2, "{versions}");
    assert!(before.iter().all(|l| !l.contains("cannot be activated")), "both fit the project: {before:?}");
    assert!(
        before[0].starts_with("* v2\tfrom v1\t") && before[1].starts_with("  v1\tfirst\t12 examples"),
        "{before:?}"
    );
    assert_eq!(versions["activated"], "project shades serves v1");
    assert!(after[0].starts_with("  v2") && after[1].starts_with("* v1"), "{after:?}");
    let predicted = versions["predicted"].as_array().unwrap();
    assert_eq!(predicted.len(), 2, "{versions}");
    assert_eq!([&predicted[0][0], &predicted[1][0]], ["dark", "light"], "{versions}");
    assert!(predicted[0][3].as_str().unwrap().ends_with("dark/0.png"), "{versions}");
    assert!(versions["served"].as_str().unwrap().starts_with("model version v1, "), "{versions}");
    let unreadable = &versions["unreadable"];
    assert_eq!(unreadable["code"], 1, "an unreadable image fails the command: {unreadable}");
    assert_eq!(unreadable["lines"][0][0], "dark", "the readable image is still predicted: {unreadable}");
    assert_eq!(unreadable["lines"][1][0], "error", "{unreadable}");
    assert!(unreadable["lines"][1][2].as_str().unwrap().ends_with("notes.txt"), "{unreadable}");
    let changed = lines("changed");
    assert_eq!(changed.len(), 2, "{versions}");
    assert!(
        changed.iter().all(|l| l.starts_with("  v") && l.ends_with("\tfor an earlier spec: cannot be activated")),
        "{changed:?}"
    );
    assert_eq!(versions["unknown"]["code"], 1);
    assert!(versions["unknown"]["stderr"].as_str().unwrap().starts_with("alps-client: NOT_FOUND"), "{versions}");
    assert_eq!(report["cli_missing"]["code"], 1);
    assert!(report["cli_missing"]["stderr"].as_str().unwrap().contains("NOT_FOUND"), "{}", report["cli_missing"]);
}
