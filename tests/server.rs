//! The real `alps-server` binary: gRPC health, reflection, metrics, graceful shutdown.

use alps_system_tests::{Process, ServerDirs, binary, start_server};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn connect(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

async fn list_services(channel: Channel) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one reflection response");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection response {other:?}"),
    }
}

// Multi-threaded so the client's connection task keeps running (and answers the server's
// HTTP/2 GOAWAY) while the test thread blocks waiting for the server to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_reflection_and_metrics_then_stops_cleanly_on_sigterm() {
    let dirs = ServerDirs::new();
    let (mut server, grpc) = start_server(&dirs, &[]);
    let channel = connect(&grpc).await;

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let services = list_services(channel).await;
    for expected in [
        "grpc.health.v1.Health",
        "alps.v1.ProjectService",
        "alps.v1.InferenceService",
        "alps.v1.HeuristicService",
        "alps.v1.ExampleService",
        "alps.v1.TrainingService",
        "alps.v1.ModelVersionService",
        "inference.GRPCInferenceService",
    ] {
        assert!(services.iter().any(|s| s == expected), "{expected} missing from {services:?}");
    }

    let status = server.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let log = server.log().join("\n");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn text_logs_written_to_a_pipe_are_plain_text() {
    use std::io::BufRead;
    let dirs = ServerDirs::new();
    let mut child = std::process::Command::new(binary("alps-server"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dirs.data.path())
        .arg("--plugin-dir")
        .arg(dirs.plugins.path())
        .env("RUST_LOG", "info")
        .env_remove("ALPS_LOG_FORMAT")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .take_while(|line| !line.contains("listening"))
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(lines.iter().any(|line| line.contains("INFO")), "{lines:?}");
    assert!(lines.iter().all(|line| !line.contains('\u{1b}')), "colour codes in a pipe: {lines:?}");
}

#[tokio::test]
async fn metrics_endpoint_serves_build_info() {
    let dirs = ServerDirs::new();
    let (mut server, _grpc) = start_server(&dirs, &[]);
    let metrics = server.listening_addr("metrics");
    let response = alps_system_tests::http_client().get(format!("http://{metrics}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("alps_build_info{"), "{text}");
    assert!(server.terminate().success());
}

#[test]
fn sigint_stops_the_server_cleanly_too() {
    let dirs = ServerDirs::new();
    let (mut server, _grpc) = start_server(&dirs, &[]);
    server.signal(libc::SIGINT);
    let status = server.wait();
    assert!(status.success(), "exit status after SIGINT: {status}");
}

#[test]
fn default_plugin_dir_is_the_directory_of_the_binary_with_the_builtins() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Process::start(
        "alps-server",
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
    );
    let fields = server.wait_for_log("plugin directory");
    let expected = binary("alps-server").parent().unwrap().to_path_buf();
    assert_eq!(std::path::PathBuf::from(fields["dir"].as_str().unwrap()), expected);
    let loaded = server.wait_for_log("plugin loaded");
    assert_eq!(loaded["plugin"], "alps-builtin", "{loaded}");
    assert!(loaded["heuristics"].as_str().unwrap().contains("bald@1.0.0"), "{loaded}");
    assert!(server.terminate().success());
}

#[test]
fn self_check_reports_libtorch_and_a_forward_pass() {
    let output = std::process::Command::new(binary("alps-server")).arg("self-check").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("libtorch: 2.11.0"), "{stdout}");
    assert!(stdout.contains("forward pass on"), "{stdout}");
    assert!(stdout.contains("self-check: ok"), "{stdout}");
}

// Current-thread runtime on purpose: while the test thread blocks in `terminate`, the client
// cannot answer the server's graceful HTTP/2 shutdown, like a hung client would. The server must
// give up on it after the grace period instead of waiting forever.
#[tokio::test(flavor = "current_thread")]
async fn a_hung_client_cannot_hold_the_server_past_the_grace_period() {
    let dirs = ServerDirs::new();
    let (mut server, grpc) = start_server(&dirs, &["--shutdown-grace-secs", "1"]);
    let channel = connect(&grpc).await;
    HealthClient::new(channel.clone()).check(HealthCheckRequest { service: String::new() }).await.unwrap();
    let status = server.terminate();
    assert!(status.success(), "exit status: {status}");
    let log = server.log().join("\n");
    assert!(log.contains("grace period over"), "{log}");
    drop(channel);
}

/// Opens a raw HTTP/2 connection to `addr` and answers how it ended: `Ok` when the server
/// closed it gracefully (GOAWAY), an error if it broke, a timeout if it was never closed.
async fn raw_h2_connection_end(addr: &str, within: std::time::Duration) -> Result<Result<(), h2::Error>, ()> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (_client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::time::timeout(within, connection).await.map_err(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_closed_gracefully_at_their_maximum_age_and_clients_reconnect() {
    let dirs = ServerDirs::new();
    let (mut server, grpc) = start_server(&dirs, &["--max-connection-age-secs", "1"]);
    // The server ends an idle connection with GOAWAY once it is 1 s old (generous bound: the
    // test checks that it happens, not how fast).
    let ended = raw_h2_connection_end(&grpc, std::time::Duration::from_secs(60)).await;
    assert!(matches!(ended, Ok(Ok(()))), "the connection was not closed gracefully: {ended:?}");

    // A client keeps working across its connection's end: it reconnects (to any replica).
    let mut health = HealthClient::new(connect(&grpc).await);
    for _ in 0..3 {
        let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
        assert_eq!(status.into_inner().status, ServingStatus::Serving as i32);
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    assert!(server.terminate().success());

    // 0 turns the limit off: the connection outlives what the first server allowed by far.
    let (mut server, grpc) = start_server(&dirs, &["--max-connection-age-secs", "0"]);
    let ended = raw_h2_connection_end(&grpc, std::time::Duration::from_secs(3)).await;
    assert!(ended.is_err(), "closed without a maximum age: {ended:?}");
    assert!(server.terminate().success());
}
