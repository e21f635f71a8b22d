//! Bad configuration makes the binaries exit non-zero with one stderr line naming the problem.

use alps_system_tests::{ServerDirs, path_str, run_to_exit, start_server};

/// Asserts a failed exit and a single stderr line that contains every `needle`.
fn assert_one_line_failure(name: &str, args: &[&str], needles: &[&str]) {
    let (status, stderr) = run_to_exit(name, args);
    assert!(!status.success(), "{name} {args:?} should fail; stderr: {stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got: {stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} missing from {:?}", lines[0]);
    }
    let parts: Vec<&str> = lines[0].split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(part), "{part:?} said twice in {:?}", lines[0]);
    }
}

fn server_args<'a>(data: &'a str, plugins: &'a str, listen: &'a str, metrics: &'a str) -> Vec<&'a str> {
    vec![
        "--data-dir",
        data,
        "--plugin-dir",
        plugins,
        "--listen",
        listen,
        "--metrics-listen",
        metrics,
        "--http-listen",
        "127.0.0.1:0",
    ]
}

#[test]
fn unwritable_data_dir_is_named() {
    let dirs = ServerDirs::new();
    let file = dirs.data.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let data = file.join("data");
    let args = server_args(path_str(&data), path_str(dirs.plugins.path()), "127.0.0.1:0", "127.0.0.1:0");
    assert_one_line_failure("alps-server", &args, &["data dir", path_str(&data)]);
}

#[test]
fn data_dir_that_is_a_file_is_named() {
    let dirs = ServerDirs::new();
    let file = dirs.data.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let args = server_args(path_str(&file), path_str(dirs.plugins.path()), "127.0.0.1:0", "127.0.0.1:0");
    assert_one_line_failure("alps-server", &args, &["data dir", path_str(&file)]);
}

#[test]
fn data_dir_in_use_by_another_server_is_refused() {
    let dirs = ServerDirs::new();
    let (_first, _grpc) = start_server(&dirs, &[]);
    let args = server_args(path_str(dirs.data.path()), path_str(dirs.plugins.path()), "127.0.0.1:0", "127.0.0.1:0");
    assert_one_line_failure("alps-server", &args, &["in use", path_str(dirs.data.path())]);
}

#[test]
fn missing_plugin_dir_is_named() {
    let dirs = ServerDirs::new();
    let missing = dirs.plugins.path().join("missing");
    let args = server_args(path_str(dirs.data.path()), path_str(&missing), "127.0.0.1:0", "127.0.0.1:0");
    assert_one_line_failure("alps-server", &args, &["plugin dir", path_str(&missing), "does not exist"]);
}

#[test]
fn grpc_port_in_use_is_named() {
    let dirs = ServerDirs::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let args = server_args(path_str(dirs.data.path()), path_str(dirs.plugins.path()), &addr, "127.0.0.1:0");
    assert_one_line_failure("alps-server", &args, &[&addr, "--listen"]);
}

#[test]
fn metrics_port_in_use_is_named() {
    let dirs = ServerDirs::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let args = server_args(path_str(dirs.data.path()), path_str(dirs.plugins.path()), "127.0.0.1:0", &addr);
    assert_one_line_failure("alps-server", &args, &[&addr, "--metrics-listen"]);
}

#[test]
fn adapter_port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_one_line_failure("alps-label-studio", &["--listen", &addr], &[&addr, "--listen"]);
}

#[test]
fn adapter_malformed_core_url_is_named() {
    assert_one_line_failure(
        "alps-label-studio",
        &["--listen", "127.0.0.1:0", "--core-url", "not a url"],
        &["--core-url", "not a url"],
    );
}

#[test]
fn periods_too_long_for_time_arithmetic_are_refused_naming_the_flag() {
    // 2^64 - 1 seconds used to overflow the garbage collector's timer and silently stop it.
    for flag in ["--gc-interval-secs", "--gc-grace-secs"] {
        let (status, stderr) = run_to_exit("alps-server", &[flag, "18446744073709551615"]);
        assert!(!status.success(), "{flag}: {stderr}");
        assert!(stderr.contains(flag) && stderr.contains("315360000"), "{flag}: {stderr}");
    }
}
