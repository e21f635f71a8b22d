//! `alps-label-studio`'s security settings (issue 11, "Safe to share") across processes: the
//! webhook secret, Label Studio refusing the adapter's API key (`/health` and `/metrics`), the
//! core link's bearer token and TLS (against a small tonic server in this test that checks the
//! token and serves TLS with certificates made here), and HTTPS on the adapter's own listener.

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use alps_system_tests::{Process, eventually, path_str};
use axum::{Router, http::StatusCode};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use tonic::{
    Status,
    body::Body,
    server::NamedService,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};
use tonic_health::{pb::health_server::HealthServer, server::HealthService};

const SECRET: &str = "webhook-secret-0123456789";
const TOKEN: &str = "core-token-0123456789";
/// The adapter's warnings when a link refuses its credentials.
const LS_REFUSED: &str =
    "Label Studio refused LABEL_STUDIO_API_KEY: is it revoked, rotated, or from another Label Studio instance?";
const CORE_REFUSED: &str = "alps-server refused the adapter's credentials: check --core-token (ALPS_CORE_TOKEN)";
/// A label config the adapter serves.
const CONFIG: &str = r#"<View><Image name="img" value="$image"/><Choices name="label" toName="img" choice="single"><Choice value="dark"/><Choice value="bright"/></Choices></View>"#;
/// A personal access token: a JWT-shaped refresh token.
const PAT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl";

/// A port nobody listens on, for adapters whose core does not matter.
fn closed_port_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("http://127.0.0.1:{port}")
}

/// Starts the adapter on an ephemeral port with a fast core poll; returns it and its address.
fn start_adapter(args: &[&str], env: &[(&str, &str)]) -> (Process, String) {
    let mut all = vec!["--listen", "127.0.0.1:0", "--core-poll-ms", "100"];
    all.extend_from_slice(args);
    let mut adapter = Process::start_with_env("alps-label-studio", &all, env);
    let http = adapter.listening_addr("http");
    (adapter, http)
}

async fn health(client: &reqwest::Client, base: &str) -> Value {
    let response = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn metrics(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .basic_auth("ls", Some("basic-pass"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample `name` (with labels) in Prometheus text, if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Asserts that no log line of the adapter contains `secret`.
fn assert_never_logged(adapter: &mut Process, secret: &str) {
    let log = adapter.log();
    assert!(!log.is_empty());
    assert!(log.iter().all(|line| !line.contains(secret)), "{secret} appears in the log");
}

#[tokio::test]
async fn the_webhook_needs_its_secret_and_nothing_is_acted_on_without_it() {
    let core = closed_port_url();
    let (mut adapter, http) = start_adapter(
        &["--core-url", &core, "--basic-auth-user", "ls", "--basic-auth-pass", "basic-pass"],
        &[("ALPS_LS_WEBHOOK_SECRET", SECRET)],
    );
    let base = format!("http://{http}");
    let client = alps_system_tests::http_client();
    let event = json!({"action": "START_TRAINING", "project": {"id": 7}});
    let post = || client.post(format!("{base}/webhook")).json(&event);
    let acted = r#"alps_ls_webhook_actions_total{action="START_TRAINING"}"#;

    let refused = [
        post(),
        post().header("X-ALPS-Webhook-Secret", "webhook-secret-0123456788"),
        post().header("X-ALPS-Webhook-Secret", ""),
        post().bearer_auth("wrong"),
        post().basic_auth("ls", Some("wrong")),
    ];
    for request in refused {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "Webhook secret missing or wrong", "{body}");
    }
    let text = metrics(&client, &base).await;
    assert_eq!(sample(&text, "alps_ls_webhook_refusals_total"), Some(5.0), "{text}");
    assert_eq!(sample(&text, acted), None, "a refused webhook was acted on:\n{text}");

    let accepted = [
        post().header("X-ALPS-Webhook-Secret", SECRET),
        post().bearer_auth(SECRET),
        post().header("Authorization", format!("bearer {SECRET}")),
        // Label Studio's Start training button posts with the ML backend's Basic auth.
        post().basic_auth("ls", Some("basic-pass")),
    ];
    for request in accepted {
        let response = request.send().await.unwrap();
        // The project was never set up, so the event is read and ignored.
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<Value>().await.unwrap()["status"], "ignored");
    }
    let text = metrics(&client, &base).await;
    assert_eq!(sample(&text, acted), Some(4.0), "{text}");
    assert_eq!(sample(&text, "alps_ls_webhook_refusals_total"), Some(5.0), "{text}");
    assert_never_logged(&mut adapter, SECRET);
    assert!(adapter.terminate().success());
}

#[tokio::test]
async fn without_a_secret_the_webhook_stays_open() {
    let core = closed_port_url();
    let (mut adapter, http) = start_adapter(&["--core-url", &core], &[]);
    let response = alps_system_tests::http_client()
        .post(format!("http://{http}/webhook"))
        .json(&json!({"action": "START_TRAINING", "project": {"id": 7}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(adapter.terminate().success());
}

#[tokio::test]
async fn a_secret_that_is_too_short_stops_the_adapter_without_repeating_it() {
    let (status, stderr) = alps_system_tests::run_to_exit(
        "alps-label-studio",
        &["--listen", "127.0.0.1:0", "--webhook-secret", "tiny-secret"],
    );
    assert!(!status.success());
    assert!(stderr.contains("--webhook-secret"), "{stderr}");
    assert!(!stderr.contains("tiny-secret"), "{stderr}");
}

/// A Label Studio stand-in that answers every request with `status`.
async fn fake_label_studio(status: StatusCode) -> String {
    let app = Router::new().fallback(move || async move { (status, axum::Json(json!({"detail": "nope"}))) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

#[tokio::test]
async fn health_and_metrics_show_label_studio_refusing_the_key() {
    let client = alps_system_tests::http_client();
    let core = closed_port_url();
    let args = ["--core-url", core.as_str(), "--basic-auth-user", "ls", "--basic-auth-pass", "basic-pass"];
    let authed = |request: reqwest::RequestBuilder| request.basic_auth("ls", Some("basic-pass"));

    let refusing = fake_label_studio(StatusCode::UNAUTHORIZED).await;
    let (mut adapter, http) = start_adapter(&args, &[("LABEL_STUDIO_URL", &refusing), ("LABEL_STUDIO_API_KEY", PAT)]);
    let base = format!("http://{http}");
    let link = |base: String| {
        let client = client.clone();
        async move {
            let response = authed(client.get(format!("{base}/health"))).send().await.unwrap();
            assert_eq!(response.status(), 200, "health stays 200 whatever Label Studio says");
            response.json::<Value>().await.unwrap()["label_studio"].as_str().unwrap().to_owned()
        }
    };
    eventually("label_studio: unauthorized", || async { (link(base.clone()).await == "unauthorized").then_some(()) })
        .await;
    let text = metrics(&client, &base).await;
    assert_eq!(sample(&text, r#"alps_ls_label_studio_link{state="unauthorized"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"alps_ls_label_studio_link{state="ok"}"#), Some(0.0), "{text}");
    assert!(sample(&text, "alps_ls_label_studio_auth_refusals_total").is_some_and(|count| count >= 1.0), "{text}");
    adapter.wait_for_log(LS_REFUSED);
    let warnings = adapter.log().iter().filter(|line| line.contains(LS_REFUSED)).count();
    assert_eq!(warnings, 1);
    assert_never_logged(&mut adapter, PAT);
    assert!(adapter.terminate().success());

    // A Label Studio that accepts the key (any answer but 401) shows as "ok". A legacy key: a PAT
    // would need a real token refresh answer.
    let accepting = fake_label_studio(StatusCode::OK).await;
    let legacy = "ab12".repeat(10);
    let (mut adapter, http) =
        start_adapter(&args, &[("LABEL_STUDIO_URL", &accepting), ("LABEL_STUDIO_API_KEY", &legacy)]);
    eventually("label_studio: ok", || async { (link(format!("http://{http}")).await == "ok").then_some(()) }).await;
    assert!(adapter.terminate().success());

    let (mut adapter, http) = start_adapter(&args, &[]);
    assert_eq!(link(format!("http://{http}")).await, "not_configured");
    assert!(adapter.terminate().success());
}

/// A test CA and certificates it signed, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "ALPS test CA");
        let key = KeyPair::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
        Self { dir, issuer: Issuer::new(params, key) }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for localhost and 127.0.0.1 signed by this CA: (certificate, key) files.
    fn leaf(&self, name: &str) -> (PathBuf, PathBuf) {
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) =
            (self.dir.path().join(format!("{name}.crt")), self.dir.path().join(format!("{name}.key")));
        write_atomically(&cert_path, &cert.pem());
        write_atomically(&key_path, &key.serialize_pem());
        (cert_path, key_path)
    }
}

/// Writes by rename, the way certificate renewals replace files.
fn write_atomically(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// A gRPC service named `alps.v1.ProjectService` that refuses every call as UNAUTHENTICATED: a
/// core whose API needs a token while its health service is open.
#[derive(Clone)]
struct RefusingApi;

impl NamedService for RefusingApi {
    const NAME: &'static str = "alps.v1.ProjectService";
}

impl tower::Service<http::Request<Body>> for RefusingApi {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        std::future::ready(Ok(Status::unauthenticated("token required").into_http()))
    }
}

/// How the fake core checks its callers.
struct FakeCoreSettings<'a> {
    pki: &'a Pki,
    /// The health service requires `authorization: Bearer TOKEN`; else it is open and the
    /// ProjectService refuses every call.
    token_on_health: bool,
    /// Clients must present a certificate of the test CA.
    mutual_tls: bool,
}

/// A TLS gRPC server with `grpc.health.v1` (SERVING); returns its `https://` URL and the
/// `authorization` values it received.
async fn fake_core(settings: FakeCoreSettings<'_>) -> (String, Arc<Mutex<Vec<String>>>) {
    let (reporter, _) = tonic_health::server::health_reporter();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    let token_on_health = settings.token_on_health;
    let health = HealthServer::with_interceptor(
        HealthService::from_health_reporter(reporter),
        move |request: tonic::Request<()>| {
            let given = request.metadata().get("authorization").and_then(|value| value.to_str().ok());
            let given = given.unwrap_or_default().to_owned();
            recorded.lock().unwrap().push(given.clone());
            if token_on_health && given != format!("Bearer {TOKEN}") {
                return Err(Status::unauthenticated("token required"));
            }
            Ok(request)
        },
    );
    let (cert, key) = settings.pki.leaf("core");
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(&cert), read(&key)));
    if settings.mutual_tls {
        tls = tls.client_ca_root(Certificate::from_pem(read(&settings.pki.ca())));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = Server::builder().tls_config(tls).unwrap().add_service(health);
    let router = if token_on_health { router } else { router.add_service(RefusingApi) };
    tokio::spawn(router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
    (format!("https://127.0.0.1:{}", address.port()), seen)
}

async fn model_server(client: &reqwest::Client, http: &str) -> String {
    health(client, &format!("http://{http}")).await["model_server"].as_str().unwrap().to_owned()
}

async fn wait_for_model_server(client: &reqwest::Client, http: &str, wanted: &str) {
    eventually(&format!("model_server: {wanted}"), || async {
        (model_server(client, http).await == wanted).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_core_link_sends_the_token_over_verified_tls() {
    let client = alps_system_tests::http_client();
    let pki = Pki::new();
    let (core, seen) = fake_core(FakeCoreSettings { pki: &pki, token_on_health: true, mutual_tls: false }).await;
    let ca = pki.ca();
    let (mut adapter, http) =
        start_adapter(&["--core-url", &core, "--core-tls-ca", path_str(&ca)], &[("ALPS_CORE_TOKEN", TOKEN)]);
    wait_for_model_server(&client, &http, "ready").await;
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty() && seen.iter().all(|given| *given == format!("Bearer {TOKEN}")), "{seen:?}");
    assert_never_logged(&mut adapter, TOKEN);
    assert!(adapter.terminate().success());

    // An http:// URL with a CA bundle is taken as https://.
    let plain = core.replace("https://", "http://");
    let (mut adapter, http) =
        start_adapter(&["--core-url", &plain, "--core-tls-ca", path_str(&ca), "--core-token", TOKEN], &[]);
    wait_for_model_server(&client, &http, "ready").await;
    assert!(adapter.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_shows_as_unauthorized() {
    let client = alps_system_tests::http_client();
    let pki = Pki::new();
    let (core, _) = fake_core(FakeCoreSettings { pki: &pki, token_on_health: true, mutual_tls: false }).await;
    let ca = pki.ca();
    for token in [Some("wrong-token-0123456789"), None] {
        let mut args = vec!["--core-url", core.as_str(), "--core-tls-ca", path_str(&ca)];
        args.extend(token.iter().flat_map(|token| ["--core-token", token]));
        let (mut adapter, http) = start_adapter(&args, &[]);
        wait_for_model_server(&client, &http, "unauthorized").await;
        let text = client.get(format!("http://{http}/metrics")).send().await.unwrap().text().await.unwrap();
        assert_eq!(sample(&text, r#"alps_ls_core_link{state="unauthorized"}"#), Some(1.0), "{text}");
        assert_eq!(sample(&text, r#"alps_ls_core_link{state="ready"}"#), Some(0.0), "{text}");
        // Label Studio is told why /setup cannot be served.
        let response = client
            .post(format!("http://{http}/setup"))
            .json(&json!({"project": "1.1764489000", "schema": CONFIG}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.json::<Value>().await.unwrap()["error"], "Model server refused the adapter's token");
        adapter.wait_for_log(CORE_REFUSED);
        let warnings = adapter.log().iter().filter(|line| line.contains(CORE_REFUSED)).count();
        assert_eq!(warnings, 1, "one warning per state change");
        if let Some(token) = token {
            assert_never_logged(&mut adapter, token);
        }
        assert!(adapter.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_that_refuses_the_token_shows_even_when_health_is_open() {
    let client = alps_system_tests::http_client();
    let pki = Pki::new();
    let (core, _) = fake_core(FakeCoreSettings { pki: &pki, token_on_health: false, mutual_tls: false }).await;
    let ca = pki.ca();
    let (mut adapter, http) = start_adapter(&["--core-url", &core, "--core-tls-ca", path_str(&ca)], &[]);
    // The adapter lists the core's projects at start; the refusal makes the health check confirm
    // the token with an API call.
    wait_for_model_server(&client, &http, "unauthorized").await;
    assert!(adapter.terminate().success());
}

/// A token the real core accepts, but below the `admin` role the adapter needs to create
/// projects: `/health` reports the model server as `unauthorized` once a setup is refused, and
/// `/status` names the role.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_below_admin_shows_once_a_setup_is_refused() {
    let client = alps_system_tests::http_client();
    let dirs = alps_system_tests::ServerDirs::new();
    let tokens = dirs.data.path().join("tokens");
    let token = alps_system_tests::create_token(&tokens, "predict", "adapter");
    let (_core, grpc) = alps_system_tests::start_server(&dirs, &["--auth-tokens-file", path_str(&tokens)]);
    let core_url = format!("http://{grpc}");
    let (mut adapter, http) = start_adapter(&["--core-url", &core_url], &[("ALPS_CORE_TOKEN", token.as_str())]);
    wait_for_model_server(&client, &http, "ready").await;
    let response = client
        .post(format!("http://{http}/setup"))
        .json(&json!({"project": "3.1764489000", "schema": CONFIG}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "/setup answers from memory");
    wait_for_model_server(&client, &http, "unauthorized").await;
    let status: Value = client.get(format!("http://{http}/status")).send().await.unwrap().json().await.unwrap();
    let error = status["projects"][0]["setup_error"].as_str().unwrap_or_default().to_owned();
    assert!(error.starts_with("PermissionDenied: ") && error.contains("admin"), "{status}");
    assert_never_logged(&mut adapter, &token);
    assert!(adapter.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_presents_the_client_certificate() {
    let client = alps_system_tests::http_client();
    let pki = Pki::new();
    let (core, _) = fake_core(FakeCoreSettings { pki: &pki, token_on_health: true, mutual_tls: true }).await;
    let (ca, (cert, key)) = (pki.ca(), pki.leaf("adapter"));
    let args = [
        "--core-url",
        &core,
        "--core-tls-ca",
        path_str(&ca),
        "--core-tls-client-cert",
        path_str(&cert),
        "--core-tls-client-key",
        path_str(&key),
        "--core-token",
        TOKEN,
    ];
    let (mut adapter, http) = start_adapter(&args, &[]);
    wait_for_model_server(&client, &http, "ready").await;
    assert!(adapter.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_adapter_serves_https_and_picks_up_a_renewed_certificate() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("adapter");
    let core = closed_port_url();
    let (mut adapter, http) = start_adapter(
        &["--core-url", &core],
        &[("ALPS_LS_TLS_CERT", path_str(&cert)), ("ALPS_LS_TLS_KEY", path_str(&key))],
    );
    assert_eq!(adapter.listening_addr("scheme"), "https");
    let trusting = |pki: &Pki| {
        let _ = alps_system_tests::http_client();
        let ca = reqwest::Certificate::from_pem(&read(&pki.ca())).unwrap();
        reqwest::Client::builder().tls_certs_only([ca]).build().unwrap()
    };
    let body = health(&trusting(&pki), &format!("https://{http}")).await;
    assert_eq!(body["status"], "UP");
    // Plain HTTP gets no answer, and a client that does not trust the CA refuses the server.
    assert!(alps_system_tests::http_client().get(format!("http://{http}/health")).send().await.is_err());
    let other = Pki::new();
    assert!(trusting(&other).get(format!("https://{http}/health")).send().await.is_err());

    // A renewed certificate (here from another CA) replaces the files: new connections get it.
    let (new_cert, new_key) = other.leaf("renewed");
    write_atomically(&key, &String::from_utf8(read(&new_key)).unwrap());
    write_atomically(&cert, &String::from_utf8(read(&new_cert)).unwrap());
    eventually("the renewed certificate", || async {
        let client = trusting(&other);
        client.get(format!("https://{http}/health")).send().await.ok().map(|response| response.status())
    })
    .await;
    assert!(adapter.terminate().success());
}
