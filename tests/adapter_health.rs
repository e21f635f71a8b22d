//! `alps-label-studio` against a real `alps-server`: `GET /health` answers 200 within
//! Label Studio's 1 s health timeout and reports the core's state, whether it is up or down.

use std::time::Duration;

use alps_system_tests::{Process, ServerDirs, eventually, start_server};

/// Label Studio's `ML_TIMEOUT_HEALTH` default: a slower answer marks the backend
/// disconnected. This is the contract under test, not a speed measurement.
const LABEL_STUDIO_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

fn start_adapter(core_url: &str) -> (Process, String) {
    let mut adapter = Process::start(
        "alps-label-studio",
        &["--listen", "127.0.0.1:0", "--core-url", core_url, "--core-poll-ms", "100"],
    );
    let http = adapter.listening_addr("http");
    (adapter, http)
}

/// One `GET /health`: asserts 200, `status: UP`, and returns `model_server`.
async fn model_server_state(client: &reqwest::Client, http: &str) -> String {
    let response = client.get(format!("http://{http}/health")).send().await.expect("health answered within 1 s");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "UP", "{body}");
    body["model_server"].as_str().unwrap().to_owned()
}

fn client() -> reqwest::Client {
    let _ = alps_system_tests::http_client();
    reqwest::Client::builder().timeout(LABEL_STUDIO_HEALTH_TIMEOUT).build().unwrap()
}

#[tokio::test]
async fn health_follows_the_core_from_ready_to_unreachable() {
    let dirs = ServerDirs::new();
    let (mut core, grpc) = start_server(&dirs, &[]);
    let (mut adapter, http) = start_adapter(&format!("http://{grpc}"));
    let client = client();

    eventually("model_server: ready", || async { (model_server_state(&client, &http).await == "ready").then_some(()) })
        .await;

    assert!(core.terminate().success());
    eventually("model_server: unreachable", || async {
        (model_server_state(&client, &http).await == "unreachable").then_some(())
    })
    .await;

    let status = adapter.terminate();
    assert!(status.success(), "adapter exit status after SIGTERM: {status}");
}

#[tokio::test]
async fn health_is_up_with_the_core_unreachable_from_the_start() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (mut adapter, http) = start_adapter(&format!("http://127.0.0.1:{closed_port}"));
    let client = client();
    // Several polls: the state must stay "unreachable" and every answer must be a 200.
    for _ in 0..5 {
        assert_eq!(model_server_state(&client, &http).await, "unreachable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = client.get(format!("http://{http}/validate")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(adapter.terminate().success());
}
