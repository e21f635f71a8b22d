//! Adapter configuration: `clap` flags, each with an environment variable.

use std::{net::SocketAddr, time::Duration};

use alps_runtime::LogFormat;
use clap::Parser;

/// How the prediction-level `score` sent to Label Studio is defined
/// (`shared/specs/label-studio-ml-backend.md` §3.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreMode {
    /// Score = probability of the predicted class: sorting ascending puts the least confident first.
    #[default]
    Confidence,
    /// Score = the acquisition heuristic's informativeness: sorting descending puts the most
    /// informative first.
    Uncertainty,
}

/// Command line of `alps-label-studio`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "alps-label-studio",
    version,
    about = "Label Studio ML backend for ALPS: Label Studio's HTTP protocol in, alps-server gRPC out"
)]
pub struct Config {
    /// Address of the HTTP server Label Studio connects to (Label Studio's usual backend port is 9090).
    #[arg(long, env = "ALPS_LS_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,

    /// URL of the alps-server gRPC endpoint.
    #[arg(long, env = "ALPS_CORE_URL", default_value = "http://127.0.0.1:50051")]
    pub core_url: String,

    /// Path prefix under which every route is served, for a backend URL such as
    /// `http://host:9090/alps` (Label Studio keeps the prefix). Empty = served at `/`.
    #[arg(long, env = "ALPS_LS_BASE_PATH", default_value = "", value_parser = parse_base_path)]
    pub base_path: String,

    /// Default meaning of the prediction score sent to Label Studio.
    #[arg(long, env = "ALPS_LS_SCORE_MODE", value_enum, default_value_t = ScoreMode::Confidence)]
    pub score_mode: ScoreMode,

    /// How often the adapter checks the core's gRPC health, in milliseconds. `/health` answers
    /// from the last result and never waits on the core.
    #[arg(long, env = "ALPS_LS_CORE_POLL_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub core_poll_ms: u64,

    /// Log line format.
    #[arg(long, env = "ALPS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// After SIGINT/SIGTERM, how long in-flight requests may take to finish before open
    /// connections are closed, in seconds.
    #[arg(long, env = "ALPS_SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,
}

impl Config {
    /// Interval between core health checks.
    pub fn core_poll_interval(&self) -> Duration {
        Duration::from_millis(self.core_poll_ms)
    }

    /// See `--shutdown-grace-secs`.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// Accepts "" or "/prefix" (no trailing slash); "prefix/" and "/prefix/" are normalised.
fn parse_base_path(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.contains(['?', '#', ' ']) {
        return Err(format!("base path {raw:?} must be a plain URL path such as /alps"));
    }
    Ok(format!("/{trimmed}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_label_studio_conventions() {
        let config = Config::try_parse_from(["alps-label-studio"]).unwrap();
        assert_eq!(config.listen, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(config.core_url, "http://127.0.0.1:50051");
        assert_eq!(config.base_path, "");
        assert_eq!(config.score_mode, ScoreMode::Confidence);
        assert_eq!(config.core_poll_interval(), Duration::from_secs(2));
    }

    #[test]
    fn base_path_is_normalised() {
        assert_eq!(parse_base_path("alps/").unwrap(), "/alps");
        assert_eq!(parse_base_path("/a/b").unwrap(), "/a/b");
        assert_eq!(parse_base_path("/").unwrap(), "");
        assert!(parse_base_path("/a?b").is_err());
    }

    #[test]
    fn poll_interval_out_of_range_is_rejected() {
        let error = Config::try_parse_from(["alps-label-studio", "--core-poll-ms", "0"]).unwrap_err();
        assert!(error.to_string().contains("--core-poll-ms"), "{error}");
    }
}
