//! The one grammar for identifiers a client sends (project id, model version, training job id,
//! heuristic name and version, external id of a labelled example), checked once at the API edge.
//!
//! Identifiers are database keys and log fields; they never name files (see
//! [`crate::store::ModelsDir`], which derives directory names from a hash). The grammar still
//! rejects everything that could be read as a path or hide another identifier, as defence in
//! depth and so that an id looks the same in every log, URL and shell:
//!
//! * 1 to `max` bytes (64 for project ids, 256 for external ids, 128 for the others);
//! * ASCII letters, digits, `_`, `-`, `.` only — no separators (`/`, `\`), no NUL or other
//!   control characters, no `%` (so `%2e%2e` is refused rather than decoded anywhere), no
//!   Unicode (look-alikes such as `․․` or fullwidth solidus are refused);
//! * the first character is a letter or a digit: no leading dot (so `.` and `..` are refused)
//!   and no leading dash (never mistaken for a command-line flag).

use tonic::Status;

/// Longest project id, in bytes.
pub const MAX_PROJECT_ID_BYTES: usize = 64;
/// Longest of every other identifier, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Why an identifier is refused; the message names the field and the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}; use 1 to {max} characters from [A-Za-z0-9_.-], starting with a letter or digit")]
pub struct IdError {
    /// The request field, e.g. `project_id`.
    pub field: String,
    /// What is wrong, without echoing more than a short prefix of the value.
    pub reason: String,
    /// The length limit that applies, in bytes.
    pub max: usize,
}

impl From<IdError> for Status {
    fn from(error: IdError) -> Self {
        Status::invalid_argument(error.to_string())
    }
}

/// Checks `value` of request field `field` against the grammar with a `max`-byte limit.
///
/// # Errors
/// [`IdError`] naming `field`.
pub fn check(field: &str, value: &str, max: usize) -> Result<(), IdError> {
    let refuse = |reason: String| Err(IdError { field: field.to_owned(), reason, max });
    let Some(first) = value.chars().next() else { return refuse("is empty".into()) };
    if value.len() > max {
        return refuse(format!("is {} bytes long", value.len()));
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        return refuse(format!("{} contains {}", preview(value), describe(bad)));
    }
    if !first.is_ascii_alphanumeric() {
        return refuse(format!("{} starts with {first:?}", preview(value)));
    }
    Ok(())
}

/// Checks a project id (`max` = [`MAX_PROJECT_ID_BYTES`]).
///
/// # Errors
/// [`IdError`] naming `field`.
pub fn project(field: &str, value: &str) -> Result<(), IdError> {
    check(field, value, MAX_PROJECT_ID_BYTES)
}

/// Checks any other identifier (`max` = [`MAX_ID_BYTES`]).
///
/// # Errors
/// [`IdError`] naming `field`.
pub fn other(field: &str, value: &str) -> Result<(), IdError> {
    check(field, value, MAX_ID_BYTES)
}

/// Longest external id of a labelled example, in bytes.
pub const MAX_EXTERNAL_ID_BYTES: usize = 256;

/// Checks the external id of a labelled example (`max` = [`MAX_EXTERNAL_ID_BYTES`]).
///
/// # Errors
/// [`IdError`] naming `field`.
pub fn external(field: &str, value: &str) -> Result<(), IdError> {
    check(field, value, MAX_EXTERNAL_ID_BYTES)
}

/// Checks an optional identifier: empty means "not given" (e.g. the newest heuristic version).
///
/// # Errors
/// [`IdError`] naming `field`.
pub fn optional(field: &str, value: &str) -> Result<(), IdError> {
    if value.is_empty() { Ok(()) } else { other(field, value) }
}

/// Checks a heuristic reference of request field `field`: `name` (required) and `version`
/// (optional: empty = newest), reported as `<field>.name` and `<field>.version`.
///
/// # Errors
/// [`IdError`] naming the sub-field at fault.
pub fn heuristic(field: &str, name: &str, version: &str) -> Result<(), IdError> {
    other(&format!("{field}.name"), name)?;
    optional(&format!("{field}.version"), version)
}

/// A quoted, escaped, at most 32-character prefix of `value` for messages (never the whole of a
/// 10 KB id, never raw control characters).
fn preview(value: &str) -> String {
    let mut shown: String = value.chars().take(32).collect();
    if shown.len() < value.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

fn describe(c: char) -> String {
    match c {
        '/' | '\\' => format!("a path separator {c:?}"),
        '\0' => "a NUL byte".into(),
        c if c.is_control() => format!("a control character U+{:04X}", u32::from(c)),
        c if !c.is_ascii() => format!("the non-ASCII character U+{:04X}", u32::from(c)),
        c => format!("{c:?}"),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Ids an attacker would try: path components, encodings, NUL, look-alikes, length.
    fn hostile() -> Vec<String> {
        let mut ids: Vec<String> = [
            ".",
            "..",
            "...",
            "a/../../b",
            "/abs",
            "../x",
            "x/..",
            "a\\b",
            "%2e%2e",
            "%2f",
            ".hidden",
            "-rf",
            "a\0b",
            "\0",
            "",
            " ",
            "a b",
            "tab\t",
            "new\nline",
            "․․",
            "a／b",
            "ａ",
            "ᴀ",
            "a\u{202e}b",
            "~",
            "a:b",
            "*",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        ids.push("a".repeat(10 * 1024));
        ids
    }

    #[test]
    fn every_hostile_id_is_refused_naming_the_field() {
        for id in hostile() {
            let error = other("project_id", &id).unwrap_err();
            assert_eq!(error.field, "project_id");
            let status = Status::from(error);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{id:?}");
            assert!(status.message().starts_with("project_id: "), "{}", status.message());
            assert!(status.message().len() < 300, "the message must not echo a long id: {}", status.message());
        }
    }

    #[test]
    fn ordinary_ids_pass() {
        for id in ["digits", "ls-12", "v3", "job-1733-0000abcd", "bald", "1.0.0", "power_bald", "A.b-c_9"] {
            other("id", id).unwrap();
        }
        project("project_id", &"p".repeat(64)).unwrap();
        project("project_id", &"p".repeat(65)).unwrap_err();
        other("id", &"p".repeat(128)).unwrap();
        optional("version", "").unwrap();
        optional("version", "..").unwrap_err();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the string, an accepted id is one path component that is neither `.` nor
        /// `..` and has no separator, NUL or non-ASCII byte.
        #[test]
        fn an_accepted_id_is_a_single_plain_component(value in "\\PC{0,80}|[A-Za-z0-9_.\\-/\\\\%\0]{0,80}") {
            if other("id", &value).is_ok() {
                let path = std::path::Path::new(&value);
                let components: Vec<_> = path.components().collect();
                prop_assert_eq!(components.len(), 1);
                prop_assert!(matches!(components[0], std::path::Component::Normal(_)));
                prop_assert!(!value.starts_with('.') && !value.starts_with('-'));
                prop_assert!(value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)));
            }
        }

        /// The grammar accepts exactly its language.
        #[test]
        fn the_grammar_is_exact(value in "[A-Za-z0-9][A-Za-z0-9_.-]{0,127}") {
            prop_assert!(other("id", &value).is_ok());
        }
    }
}
