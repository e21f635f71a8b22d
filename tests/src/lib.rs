//! Harness for the cross-process tests: starts the real `alps-server` and `alps-label-studio`
//! binaries, reads their JSON logs, and stops them with signals.
//!
//! The binaries are taken from the cargo target directory of the test executable
//! (`target/<profile>/`); `make test` builds them first (`cargo build --workspace`, which includes the built-in plugin).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Generous bound for a process to start or stop on a loaded 2-core CI machine. Only a bound on
/// waiting, never an assertion about speed.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of a workspace binary built for the same profile as the running test.
///
/// # Panics
/// If the binary has not been built.
pub fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = binary_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first (binaries and the built-in plugin)",
        path.display()
    );
    path
}

/// A running child process whose stdout (JSON log lines) is collected by a reader thread.
pub struct Process {
    name: String,
    child: Child,
    stdout: Receiver<String>,
    seen: Vec<String>,
    listening: Option<Value>,
}

impl Process {
    /// Starts `binary(name)` with `args` and `--log-format json`.
    pub fn start(name: &str, args: &[&str]) -> Self {
        Self::start_with_env(name, args, &[])
    }

    /// As [`start`](Self::start), with extra environment variables.
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(binary(name))
            .args(args)
            .envs(env.iter().copied())
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        let (lines, stdout) = mpsc::channel();
        let pipe = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        Self { name: name.to_owned(), child, stdout, seen: Vec::new(), listening: None }
    }

    /// Waits for the log event whose message is `message` and returns its `fields` object.
    ///
    /// # Panics
    /// If the process exits or [`PROCESS_TIMEOUT`] passes first; the log so far is printed.
    pub fn wait_for_log(&mut self, message: &str) -> Value {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let event: Option<Value> = serde_json::from_str(&line).ok();
                    self.seen.push(line);
                    if let Some(fields) = event.and_then(|e| e.get("fields").cloned())
                        && fields["message"] == message
                    {
                        return fields;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no {message:?} log within {PROCESS_TIMEOUT:?}; log:\n{}",
                        self.name,
                        self.seen.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{}: exited before logging {message:?}; log:\n{}", self.name, self.seen.join("\n"))
                }
            }
        }
    }

    /// Returns the address in field `field` of the `listening` log, waiting for that log the
    /// first time.
    pub fn listening_addr(&mut self, field: &str) -> String {
        if self.listening.is_none() {
            self.listening = Some(self.wait_for_log("listening"));
        }
        let fields = self.listening.as_ref().expect("set above");
        fields[field].as_str().unwrap_or_else(|| panic!("no {field} in {fields}")).to_owned()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Sends SIGTERM and waits for the exit.
    ///
    /// # Panics
    /// If the process does not exit within [`PROCESS_TIMEOUT`].
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// Waits for the process to exit on its own.
    ///
    /// # Panics
    /// If it does not exit within [`PROCESS_TIMEOUT`].
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {PROCESS_TIMEOUT:?}", self.name);
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Log lines read so far plus any still buffered.
    pub fn log(&mut self) -> Vec<String> {
        self.seen.extend(self.stdout.try_iter());
        self.seen.clone()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A test that failed half-way must not leave servers behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `binary(name)` with `args`, expecting it to exit by itself, and returns its exit status
/// and stderr. Stdout (logs) is discarded.
///
/// # Panics
/// If it does not exit within [`PROCESS_TIMEOUT`] (it is killed first).
pub fn run_to_exit(name: &str, args: &[&str]) -> (ExitStatus, String) {
    run_to_exit_with_env(name, args, &[])
}

/// [`run_to_exit`] with `env` added to the environment.
///
/// # Panics
/// If it does not exit within [`PROCESS_TIMEOUT`] (it is killed first).
pub fn run_to_exit_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut child = Command::new(binary(name))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {name}: {error}"));
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{name} {args:?} was expected to exit but kept running");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped stderr"), &mut stderr).expect("read stderr");
    (status, stderr)
}

/// Polls `probe` every 50 ms until it returns `Some`, for at most [`PROCESS_TIMEOUT`].
///
/// # Panics
/// With `what` if the time runs out.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `alps-server` on ephemeral ports with a fresh data dir, an empty plugin dir and the
/// `extra` flags, and returns it with its gRPC address (`host:port`). The directories live as
/// long as `dirs`.
pub fn start_server(dirs: &ServerDirs, extra: &[&str]) -> (Process, String) {
    start_server_with_env(dirs, extra, &[])
}

/// As [`start_server`], with extra environment variables (e.g. fault injection).
pub fn start_server_with_env(dirs: &ServerDirs, extra: &[&str], env: &[(&str, &str)]) -> (Process, String) {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--data-dir",
        path_str(dirs.data.path()),
        "--plugin-dir",
        path_str(dirs.plugins.path()),
    ];
    args.extend_from_slice(extra);
    let mut server = Process::start_with_env("alps-server", &args, env);
    let grpc = server.listening_addr("grpc");
    (server, grpc)
}

/// Temporary data and plugin directories for one server.
pub struct ServerDirs {
    /// `--data-dir`.
    pub data: tempfile::TempDir,
    /// `--plugin-dir`.
    pub plugins: tempfile::TempDir,
}

impl ServerDirs {
    /// Two fresh, empty directories.
    pub fn new() -> Self {
        Self { data: tempfile::tempdir().expect("temp dir"), plugins: tempfile::tempdir().expect("temp dir") }
    }
}

impl Default for ServerDirs {
    fn default() -> Self {
        Self::new()
    }
}

/// A path as `&str` (temporary paths are UTF-8 on the machines we test on).
pub fn path_str(path: &std::path::Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The built-in heuristic plugin built beside the binaries (`libalps_heuristics_builtin.so`).
pub fn builtin_plugin() -> PathBuf {
    binary(&format!("libalps_heuristics_builtin.{}", std::env::consts::DLL_EXTENSION))
}

/// Builds the out-of-tree example plugin (`heuristics/examples`) with `features` (e.g.
/// `["fault-panic"]`) and returns the path of the shared library. Each feature set gets its own
/// target directory under `target/example-plugins/`, so repeated calls reuse the build.
///
/// # Panics
/// If cargo fails.
pub fn example_plugin(features: &[&str]) -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let name = if features.is_empty() { "default".to_owned() } else { features.join("+") };
    let target_dir = binary_dir().join("..").join("example-plugins").join(&name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(workspace.join("heuristics/examples/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--features", &features.join(",")])
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "building the example plugin failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    target_dir.join("debug").join(format!("libalps_example_plugin.{}", std::env::consts::DLL_EXTENSION))
}

/// `target/<profile>/`, where the workspace binaries are.
fn binary_dir() -> PathBuf {
    let test_exe = std::env::current_exe().expect("current_exe");
    test_exe.parent().and_then(|deps| deps.parent()).expect("target dir").to_path_buf()
}

/// Copies `file` into `dir` under `name` atomically (copy to a temporary name, then rename), the
/// way ops should replace a plugin on a running server.
pub fn install_plugin(file: &std::path::Path, dir: &std::path::Path, name: &str) {
    let partial = dir.join(format!(".{name}.partial"));
    std::fs::copy(file, &partial).expect("copy plugin");
    std::fs::rename(&partial, dir.join(name)).expect("rename plugin");
}

/// An HTTP client for the tests. reqwest is built without a default TLS crypto provider (see the
/// workspace Cargo.toml), so ring is installed first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// `<data>/models/<hex sha256 of project>`: where alps-server keeps a project's model versions
/// (directory names are hashes, never client strings).
pub fn project_models_dir(data: &std::path::Path, project: &str) -> PathBuf {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(project.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    data.join("models").join(hash)
}

/// `message` with `authorization: Bearer <token>` metadata, as alps-server's auth layer reads it.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ASCII token"));
    request
}

/// Creates a token with `alps-server token create` and returns it (the only place it is shown).
///
/// # Panics
/// If the command fails.
pub fn create_token(tokens_file: &std::path::Path, role: &str, name: &str) -> String {
    let output = Command::new(binary("alps-server"))
        .args(["token", "create", "--role", role, "--name", name, "--tokens-file", path_str(tokens_file)])
        .output()
        .expect("run alps-server token create");
    assert!(output.status.success(), "token create failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 token").trim().to_owned()
}

/// A throwaway certificate authority for TLS tests, with PEM files in a temporary directory.
pub struct TestPki {
    /// Holds the PEM files.
    pub dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    /// A new CA (`ca.pem` in [`dir`](Self::dir)).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "ALPS test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("key"))
            .expect("self-signed CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
        Self { dir, ca }
    }

    /// The CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// Issues a certificate for `localhost` and 127.0.0.1 (server or client) and writes
    /// `<name>.pem` and `<name>.key`; returns the two paths.
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let (cert_path, key_path) =
            (self.dir.path().join(format!("{name}.pem")), self.dir.path().join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// A gRPC channel to `addr`: plaintext, or TLS verified against `ca_pem` (server name
/// `localhost`) with an optional client identity `(cert PEM, key PEM)` for mutual TLS.
///
/// # Errors
/// The transport error if the connection or handshake fails.
pub async fn channel(
    addr: &str,
    ca_pem: Option<&str>,
    identity: Option<(&str, &str)>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let Some(ca) = ca_pem else {
        return Channel::from_shared(format!("http://{addr}")).expect("valid URI").connect().await;
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}")).expect("valid URI").tls_config(tls)?.connect().await
}

/// Runs the project venv's Python (`.venv/bin/python`) with `args` in the repository root and
/// returns its standard output; panics with its standard error if it fails.
pub fn venv_python(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(root.join(".venv/bin/python"))
        .args(args)
        .current_dir(&root)
        .output()
        .expect("run the venv's python (run scripts/bootstrap.sh first)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "python {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Exports torchvision's ResNet-18 with the state dict at `weights` (a `.pth` file) as
/// TorchScript at `script`: 1000 classes, no dropout, 3×16×16 input.
pub fn export_torchvision_resnet18(weights: &Path, script: &Path) {
    venv_python(&[
        "scripts/export_torchscript.py",
        "--torchvision",
        "resnet18",
        "--weights",
        path_str(weights),
        "--classes",
        "1000",
        "--dropout",
        "0",
        "--input",
        "3",
        "16",
        "16",
        "--out",
        path_str(script),
    ]);
}

/// A throwaway PostgreSQL server on loopback, started on first use by
/// `scripts/throwaway-postgres.sh` and stopped by it when this process ends (its standard
/// input closes). Returns the superuser's URL (`postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`).
///
/// # Panics
/// If PostgreSQL is not installed (`scripts/bootstrap-postgres.sh` installs it) or does not start.
pub fn postgres_server() -> &'static str {
    static SERVER: std::sync::OnceLock<(Child, String)> = std::sync::OnceLock::new();
    let (_, url) = SERVER.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/throwaway-postgres.sh");
        let mut child =
            Command::new(script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run the script");
        let (mut url, mut ca) = (String::new(), String::new());
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        stdout.read_line(&mut url).expect("read the URL");
        assert!(url.starts_with("postgres://"), "no PostgreSQL for the tests (see the script's error above)");
        // Read before the pipe closes: the script writes the CA file's path second, and a write to
        // a closed pipe would end it (and its server).
        stdout.read_line(&mut ca).expect("read the CA file's path");
        (child, url.trim().to_owned())
    });
    url
}

/// A new database on [`postgres_server`] owned by a new login role without superuser rights,
/// as a managed PostgreSQL gives an application: returns (the role's name, its database URL).
pub fn postgres_database(name: &str) -> (String, String) {
    let role = format!("{name}_{}", std::process::id());
    postgres_admin(&format!("CREATE ROLE {role} LOGIN PASSWORD 'secret'"));
    postgres_admin(&format!("CREATE DATABASE {role} OWNER {role}"));
    let server = postgres_server();
    let host = server.rsplit_once('@').and_then(|(_, rest)| rest.split('/').next()).expect("host:port");
    (role.clone(), format!("postgres://{role}:secret@{host}/{role}"))
}

/// Runs `sql` on [`postgres_server`] as the superuser.
pub fn postgres_admin(sql: &str) {
    let server = postgres_server();
    // The blocking client runs its own tokio runtime: not on a thread of the test's.
    thread::scope(|scope| {
        scope.spawn(|| {
            let mut admin = postgres::Client::connect(server, postgres::NoTls).expect("connect as the superuser");
            admin.batch_execute(sql).expect("admin SQL");
        });
    });
}

/// Runs `sql` on the database at `url` (a role's own) and returns the first column of its first
/// row as text, if any: for tests that look at what the server stored.
pub fn postgres_value(url: &str, sql: &str) -> Option<String> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
                let rows = client.simple_query(sql).expect("query");
                rows.iter().find_map(|message| match message {
                    postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                })
            })
            .join()
            .expect("query thread")
    })
}

/// A throwaway S3-compatible server (moto) on loopback, started on first use by
/// `scripts/throwaway-s3.sh` and stopped by it when this process ends. Returns its endpoint
/// (`http://127.0.0.1:PORT`); make a bucket with [`s3_bucket`].
///
/// # Panics
/// If moto is not installed (`scripts/bootstrap.sh scripts/requirements-objects.txt`).
pub fn s3_server() -> &'static str {
    static SERVER: std::sync::OnceLock<(Child, String)> = std::sync::OnceLock::new();
    let (_, url) = SERVER.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/throwaway-s3.sh");
        let mut child =
            Command::new(script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run the script");
        let mut url = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut url).expect("read the URL");
        assert!(url.starts_with("http://"), "no S3 server for the tests (see the script's error above)");
        (child, url.trim().to_owned())
    });
    url
}

/// Makes bucket `name` (unique per test process) on [`s3_server`]; returns its name.
pub async fn s3_bucket(name: &str) -> String {
    let bucket = format!("{name}-{}", std::process::id()).replace('_', "-");
    let response = http_client().put(format!("{}/{bucket}", s3_server())).send().await.expect("create the bucket");
    assert!(response.status().is_success(), "{response:?}");
    bucket
}

/// The keys under `prefix` in `bucket` on [`s3_server`] (the first 1,000).
pub async fn s3_keys(bucket: &str, prefix: &str) -> Vec<String> {
    let url = format!("{}/{bucket}?list-type=2&prefix={prefix}", s3_server());
    let body = http_client().get(url).send().await.expect("list").text().await.expect("listing");
    body.split("<Key>").skip(1).filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_owned())).collect()
}

/// The environment a server needs to use [`s3_server`] through `endpoint`: test credentials,
/// a region, the endpoint and plain HTTP.
pub fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test-secret".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL", endpoint.into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

/// A TCP relay on a loopback port to `target` that a test can cut (open connections are shut
/// down and new ones closed at once, as when a server goes away) or freeze (connections stay
/// open, new ones are accepted, and no byte passes: a server that stopped answering, or a
/// network that drops packets), and restore: the server behind it keeps its state.
pub struct Relay {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    live: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    /// Starts relaying to `target` (`host:port`).
    pub fn start(target: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("address").port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let live = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (target, accepting, connections) = (target.to_owned(), open.clone(), live.clone());
        let holding = frozen.clone();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !accepting.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let mut live = connections.lock().expect("relay connections");
                live.extend([client.try_clone(), server.try_clone()].into_iter().flatten());
                for (mut from, mut to) in
                    [(client.try_clone(), server.try_clone()), (server.try_clone(), client.try_clone())]
                        .into_iter()
                        .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    let holding = holding.clone();
                    thread::spawn(move || {
                        let mut buffer = [0; 16 * 1024];
                        while let Ok(read @ 1..) = std::io::Read::read(&mut from, &mut buffer) {
                            while holding.load(std::sync::atomic::Ordering::SeqCst) {
                                thread::sleep(Duration::from_millis(20));
                            }
                            if std::io::Write::write_all(&mut to, &buffer[..read]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Self { port, open, frozen, live }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection, and every new one until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for stream in self.live.lock().expect("relay connections").drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Holds every byte, of open connections and new ones, until [`restore`](Self::restore).
    pub fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Relays new connections again, and the bytes held while frozen.
    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
        self.frozen.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Relay {
    /// Lets the relaying threads see their connections end (a test that failed while frozen).
    fn drop(&mut self) {
        self.frozen.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Every latency measured by the client tasks `clients`, in one list (benchmarks).
///
/// # Panics
/// If a client task panicked.
pub async fn latencies_of(clients: Vec<tokio::task::JoinHandle<Vec<Duration>>>) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await.expect("a client task"));
    }
    latencies
}

/// The median of `values`, the upper middle one of an even count (benchmarks report the median
/// of their rounds).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
