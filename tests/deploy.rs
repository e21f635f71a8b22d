//! The deployment files: `deploy/check.sh` lints them, validates the compose files against the
//! Compose Specification's schema, checks that each compose profile starts the services its
//! services depend on, and validates every Kustomize overlay, rendered, against the Kubernetes
//! API schemas (strict: unknown fields are errors). It passes on the repository's files and
//! fails, naming the fault, on broken copies.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A copy of `deploy/` with `change` applied; `deploy/check.sh` on it: (success, output).
fn check_copy(change: impl FnOnce(&Path)) -> (bool, String) {
    let copy = tempfile::tempdir().unwrap();
    let status = Command::new("cp").arg("-r").arg(repository().join("deploy")).arg(copy.path()).status().unwrap();
    assert!(status.success());
    let deploy = copy.path().join("deploy");
    change(&deploy);
    let output = Command::new(repository().join("deploy/check.sh")).arg(&deploy).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn replace(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{} lacks {from:?}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn every_overlay_renders_and_validates() {
    let (ok, output) = check_copy(|_| {});
    assert!(ok, "{output}");
    assert!(output.contains("compose files validate against the Compose Specification: compose.yaml"), "{output}");
    assert!(output.contains("every compose profile starts the services its services depend on"), "{output}");
    // The cluster overlays add a PodDisruptionBudget to the server.
    for (overlay, resources) in [("embedded", 6), ("embedded-gpu", 6), ("cluster", 7), ("cluster-gpu", 7)] {
        let line = format!("overlay {overlay} renders and validates ({resources} resources)");
        assert!(output.contains(&line), "{output}");
    }
}

/// A change to a copy of `deploy/`.
type Change = Box<dyn FnOnce(&Path)>;

#[test]
fn broken_manifests_are_refused_naming_the_fault() {
    let server = |deploy: &Path| deploy.join("kubernetes/overlays/embedded/alps-server.yaml");
    let cases: [(&str, Change, &str); 7] = [
        (
            "an unknown field",
            Box::new(move |d: &Path| replace(&server(d), "  replicas: 1", "  replicaz: 1")),
            "'replicaz' was unexpected",
        ),
        (
            "a wrong type",
            Box::new(|d: &Path| {
                replace(&d.join("kubernetes/base/adapter.yaml"), "containerPort: 9090", "containerPort: \"x\"")
            }),
            "'x' is not of type 'integer'",
        ),
        (
            "a missing resource file",
            Box::new(|d: &Path| std::fs::remove_file(d.join("kubernetes/base/adapter.yaml")).unwrap()),
            "adapter.yaml",
        ),
        (
            "an unknown compose key",
            Box::new(|d: &Path| replace(&d.join("compose.yaml"), "stop_grace_period:", "stop_grace_periods:")),
            "'stop_grace_periods' was unexpected",
        ),
        (
            "an unknown value in a compose file",
            Box::new(|d: &Path| replace(&d.join("compose.yaml"), "condition: service_healthy", "condition: healthy")),
            "'healthy' is not one of ['service_started', 'service_healthy', 'service_completed_successfully']",
        ),
        (
            "a profile that lacks a service one of its services depends on",
            Box::new(|d: &Path| {
                replace(
                    &d.join("compose.yaml"),
                    "alps-server: { condition: service_started, required: false }",
                    "alps-server: { condition: service_started }",
                )
            }),
            "profile cluster: alps-label-studio depends on alps-server, which the profile does not start",
        ),
        (
            "a YAML syntax error",
            Box::new(|d: &Path| replace(&d.join("compose.yaml"), "services:", "services: [")),
            "compose.yaml",
        ),
    ];
    for (what, change, needle) in cases {
        let (ok, output) = check_copy(change);
        assert!(!ok, "{what} passed:\n{output}");
        assert!(output.contains(needle), "{what}: the output does not name {needle:?}:\n{output}");
    }
}
