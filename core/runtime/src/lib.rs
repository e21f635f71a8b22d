//! Process plumbing shared by `alps-server` and `alps-label-studio`: structured logging,
//! graceful-shutdown signals and the one-line fatal error that a bad configuration exits with.

use std::{error::Error, io::IsTerminal, process::ExitCode, time::Duration};

use tokio::sync::watch;

use tracing_subscriber::{EnvFilter, fmt};

/// Log line format, chosen with `--log-format` / `ALPS_LOG_FORMAT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers); fields under `"fields"`.
    Json,
}

/// Installs the global `tracing` subscriber writing to stdout.
///
/// The level filter comes from `RUST_LOG` (e.g. `RUST_LOG=alps_core=debug`), default `info`.
/// Text lines are coloured only on a terminal: a file or a log collector gets plain text.
/// Calling it twice keeps the first subscriber.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true).with_ansi(std::io::stdout().is_terminal());
    // `try_init` fails only when a subscriber is already set, which is harmless.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(false).try_init(),
    };
}

/// A graceful-shutdown trigger fed by SIGINT (Ctrl-C) and SIGTERM (`kill`, Kubernetes).
///
/// Cheap to clone; every clone sees the same signal.
#[derive(Clone, Debug)]
pub struct Shutdown {
    requested: watch::Receiver<bool>,
}

impl Shutdown {
    /// Installs the SIGINT and SIGTERM handlers now. From this call on, the signals no longer
    /// kill the process but start a graceful shutdown, so install it before announcing
    /// readiness. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The I/O error if a handler cannot be installed.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let (request, requested) = watch::channel(false);
        tokio::spawn(async move {
            let received = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            };
            tracing::info!(signal = received, "shutting down: draining in-flight requests");
            let _ = request.send(true);
        });
        Ok(Self { requested })
    }

    /// A trigger that fires when `requested` resolves instead of on a signal (for tests and
    /// embedding).
    pub fn on(requested: impl Future<Output = ()> + Send + 'static) -> Self {
        let (request, receiver) = watch::channel(false);
        tokio::spawn(async move {
            requested.await;
            let _ = request.send(true);
        });
        Self { requested: receiver }
    }

    /// Resolves once shutdown has been requested.
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut requested = self.requested.clone();
        async move {
            // An error means the sender is gone without a request: never resolve.
            if requested.wait_for(|yes| *yes).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Drives `serving` (a server that drains by itself once shutdown is requested) to the end,
    /// but gives up `grace` after the request, so a client that never closes its connection
    /// cannot hold the process. Returns `None` when the grace period ran out.
    pub async fn drain<T>(&self, serving: impl Future<Output = T>, grace: Duration) -> Option<T> {
        let deadline = self.requested();
        tokio::select! {
            output = serving => Some(output),
            () = async { deadline.await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_secs = grace.as_secs_f64(), "grace period over: closing connections still open");
                None
            }
        }
    }
}

/// Prints `<program>: <error and its causes on one line>` to stderr and returns exit code 1.
///
/// Used by the binaries' `main` so that a bad configuration (port in use, unwritable data dir)
/// ends with a single line naming the problem, not a backtrace.
pub fn fatal(program: &str, error: &(dyn Error + 'static)) -> ExitCode {
    eprintln!("{program}: {}", one_line(error));
    ExitCode::FAILURE
}

/// `error` and its causes, joined by `": "`, leaving out a cause whose text the line already
/// holds: many errors word their cause into their own message and also expose it as their
/// source, and a cause said twice reads as two failures.
pub fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        cause = error.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that words its cause into its message and exposes it as its source too.
    #[derive(Debug)]
    struct Bind(std::io::Error);

    impl std::fmt::Display for Bind {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot listen on 127.0.0.1:1 (--listen): {}", self.0)
        }
    }

    impl Error for Bind {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    /// An error that leaves its cause to the chain.
    #[derive(Debug)]
    struct Context(Bind);

    impl std::fmt::Display for Context {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("cannot start the server")
        }
    }

    impl Error for Context {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn one_line_says_each_cause_once() {
        let in_use = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let cause = in_use().to_string();
        assert_eq!(one_line(&Bind(in_use())), format!("cannot listen on 127.0.0.1:1 (--listen): {cause}"));
        assert_eq!(
            one_line(&Context(Bind(in_use()))),
            format!("cannot start the server: cannot listen on 127.0.0.1:1 (--listen): {cause}")
        );
    }

    #[tokio::test]
    async fn drain_returns_the_output_of_a_server_that_finishes() {
        let shutdown = Shutdown::on(async {});
        let output = shutdown.drain(async { 7 }, Duration::from_secs(60)).await;
        assert_eq!(output, Some(7));
    }

    #[tokio::test]
    async fn drain_gives_up_on_a_server_that_never_finishes_after_the_grace_period() {
        let shutdown = Shutdown::on(async {});
        let output = shutdown.drain(std::future::pending::<()>(), Duration::from_millis(10)).await;
        assert_eq!(output, None);
    }

    #[tokio::test]
    async fn no_grace_period_runs_before_shutdown_is_requested() {
        let (request, requested) = tokio::sync::oneshot::channel::<()>();
        let shutdown = Shutdown::on(async move {
            let _ = requested.await;
        });
        // The server finishes on its own after 50 ms, well past the 1 ms grace: without a
        // request the grace timer must not have started.
        let serving = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            "done"
        };
        assert_eq!(shutdown.drain(serving, Duration::from_millis(1)).await, Some("done"));
        drop(request);
    }
}
