//! Errors for people: what a client may see of an internal failure.
//!
//! libtorch and I/O errors carry C++ backtraces, install paths and load addresses. None of that
//! reaches a client: the full detail goes to the server log under a random request id, and the
//! client gets one line naming what failed and that id, so an operator can find the log entry.

use std::fmt::Display;

use tonic::Status;

use crate::store::Failure;

/// Logs `detail` at error level under a new request id and returns the one-line message for the
/// client: `"<what> failed (request id <16 hex>; details in the server log)"`.
pub fn logged(what: &str, detail: &dyn Display) -> String {
    format!("{what} failed ({})", log_detail(what, detail))
}

/// Logs `detail` under a new request id and returns `"request id <16 hex>; details in the
/// server log"`, for messages that word the failure themselves.
pub fn log_detail(what: &str, detail: &dyn Display) -> String {
    let id = request_id();
    tracing::error!(request_id = %id, what, detail = %detail, "internal error");
    see_log(&id)
}

/// A new id under which a failure's detail is logged.
fn request_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// What the client is told of a detail logged under `id`.
fn see_log(id: &str) -> String {
    format!("request id {id}; details in the server log")
}

/// `INTERNAL` with a [`logged`] message.
pub fn internal(what: &str, detail: &dyn Display) -> Status {
    Status::internal(logged(what, detail))
}

/// The status of a storage failure, its detail only in the server log: `UNAVAILABLE` when
/// trying again may succeed (the database is busy or locked by another process),
/// `RESOURCE_EXHAUSTED` for a full disk, `INTERNAL` otherwise (an I/O error, corruption). A
/// write that fails so has stored nothing (SQLite transactions roll back; blobs are renamed
/// into place whole). The first two are logged as warnings: the server is not at fault.
pub fn storage(what: &str, failure: Failure, detail: &dyn Display) -> Status {
    let warned = || {
        let id = request_id();
        tracing::warn!(request_id = %id, what, detail = %detail, ?failure, "storage refused a request");
        see_log(&id)
    };
    match failure {
        Failure::Transient => {
            Status::unavailable(format!("{what} is busy or unreachable; retry with backoff ({})", warned()))
        }
        Failure::Full => Status::resource_exhausted(format!("{what}: the server's disk is full ({})", warned())),
        Failure::Permanent => internal(what, detail),
    }
}

/// The first line of a libtorch error, cut at 200 characters: for logs that must stay one line
/// and for the rare message that is safe and useful to show (shape errors), never a backtrace.
pub fn first_line(error: &dyn Display) -> String {
    let text = error.to_string();
    let line = text.lines().next().unwrap_or_default();
    let line = line.split(" (Exception raised from").next().unwrap_or(line);
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_message_carries_the_id_and_not_the_detail() {
        let detail =
            "Exception raised from load at /opt/torch/csrc/jit/import.cpp:123\nframe #0: 0x7f3a2b1c in libtorch.so";
        let message = logged("loading the model", &detail);
        assert!(message.starts_with("loading the model failed (request id "), "{message}");
        assert!(!message.contains("/opt") && !message.contains("0x7f") && !message.contains('\n'), "{message}");
        assert_eq!(internal("x", &detail).code(), tonic::Code::Internal);
    }

    #[test]
    fn storage_failures_get_the_code_that_says_whether_to_retry() {
        let detail = "database is locked at /var/lib/alps/alps.db";
        let busy = storage("the example store", Failure::Transient, &detail);
        assert_eq!(busy.code(), tonic::Code::Unavailable);
        assert!(
            busy.message().starts_with("the example store is busy or unreachable; retry with backoff"),
            "{}",
            busy.message()
        );
        assert!(!busy.message().contains("/var"), "{}", busy.message());
        assert_eq!(storage("x", Failure::Full, &detail).code(), tonic::Code::ResourceExhausted);
        assert_eq!(storage("x", Failure::Permanent, &detail).code(), tonic::Code::Internal);
    }

    #[test]
    fn first_line_drops_backtraces() {
        let error =
            "shape '[2, 3]' is invalid for input of size 5 (Exception raised from foo at /x.cpp:1)\nframe #0: 0x1";
        assert_eq!(first_line(&error), "shape '[2, 3]' is invalid for input of size 5");
    }
}
