//! The tokens file: who may call, with which role. It stores only SHA-256 hashes of tokens.
//!
//! Format, one token per line (blank lines and `#` comments ignored):
//!
//! ```text
//! # sha256 of the token (hex)                                       role    name
//! 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 admin ops-alice
//! ```
//!
//! Tokens are `alps_` followed by 43 base64url characters (32 random bytes from the operating
//! system). A token is checked by hashing it and comparing the hash with every line in
//! constant time (`subtle`), so neither the token nor the hashes leak through timing.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Caller, Role};

/// Why a tokens file cannot be used or written.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file cannot be read or written.
    #[error("tokens file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line is malformed.
    #[error("tokens file {path}, line {line}: {reason} (expected `<sha256 hex> <predict|label|admin> <name>`)")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// `token create` with a name already in the file.
    #[error("tokens file {path} already has a token named {name:?}")]
    DuplicateName {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// The operating system's random source failed.
    #[error("cannot draw random bytes for a token: {0}")]
    Random(String),
}

#[derive(Debug, Clone)]
struct Entry {
    hash: [u8; 32],
    caller: Caller,
}

/// The parsed lines of a tokens file.
#[derive(Debug, Default, Clone)]
pub struct TokenTable {
    entries: Vec<Entry>,
}

impl TokenTable {
    /// Parses the file's text; `path` only names the file in errors.
    ///
    /// # Errors
    /// [`TokensError::Syntax`] naming the first bad line.
    pub fn parse(path: &Path, text: &str) -> Result<Self, TokensError> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |reason: String| TokensError::Syntax { path: path.to_owned(), line: index + 1, reason };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [hash, role, name] = fields[..] else {
                return Err(syntax(format!("{} fields", fields.len())));
            };
            let mut bytes = [0u8; 32];
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(syntax("the hash is not 64 hex digits".into()));
            }
            for (i, byte) in bytes.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).map_err(|e| syntax(e.to_string()))?;
            }
            let role: Role = role.parse().map_err(syntax)?;
            crate::ids::other("name", name).map_err(|e| syntax(e.to_string()))?;
            if entries.iter().any(|e: &Entry| e.caller.name == name) {
                return Err(syntax(format!("the name {name:?} is used twice")));
            }
            entries.push(Entry { hash: bytes, caller: Caller { name: name.to_owned(), role } });
        }
        Ok(Self { entries })
    }

    /// Reads and parses `path`.
    ///
    /// # Errors
    /// [`TokensError::Io`] or [`TokensError::Syntax`].
    pub fn read(path: &Path) -> Result<Self, TokensError> {
        let text = fs::read_to_string(path).map_err(|source| TokensError::Io { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file lists no token (then every call is refused).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller a presented token belongs to. Every line is compared, in constant time.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.hash.ct_eq(&hash)) && found.is_none() {
                found = Some(entry.caller.clone());
            }
        }
        found
    }
}

/// The live token table of a running server, re-read when the file changes.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    table: ArcSwap<TokenTable>,
}

impl Tokens {
    /// Reads `path`; the server refuses to start on a bad file.
    ///
    /// # Errors
    /// See [`TokenTable::read`].
    pub fn open(path: PathBuf) -> Result<Arc<Self>, TokensError> {
        let table = TokenTable::read(&path)?;
        if table.is_empty() {
            tracing::warn!(path = %path.display(), "the tokens file lists no token: every call will be refused");
        }
        Ok(Arc::new(Self { path, table: ArcSwap::from_pointee(table) }))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file; a bad or missing file keeps the previous table (and is logged).
    pub fn reload(&self) {
        match TokenTable::read(&self.path) {
            Ok(table) => {
                tracing::info!(tokens = table.len(), "tokens file re-read");
                self.table.store(Arc::new(table));
            }
            Err(error) => tracing::error!(%error, "tokens file not re-read; the previous tokens stay in force"),
        }
    }

    /// See [`TokenTable::authenticate`].
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        self.table.load().authenticate(token)
    }
}

/// The hex SHA-256 of `token`, as the tokens file stores it.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Draws a new token, appends its hash with `role` and `name` to `path` (created with mode
/// 0600 if missing) and returns the token, which is stored nowhere else.
///
/// # Errors
/// [`TokensError`]: an unreadable or malformed file, a name already used, a bad name, or a
/// failed write.
pub fn create(path: &Path, role: Role, name: &str) -> Result<String, TokensError> {
    let io = |source| TokensError::Io { path: path.to_owned(), source };
    crate::ids::other("--name", name).map_err(|e| TokensError::Syntax {
        path: path.to_owned(),
        line: 0,
        reason: e.to_string(),
    })?;
    let existing = match fs::read_to_string(path) {
        Ok(text) => TokenTable::parse(path, &text)?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => TokenTable::default(),
        Err(error) => return Err(io(error)),
    };
    if existing.entries.iter().any(|e| e.caller.name == name) {
        return Err(TokensError::DuplicateName { path: path.to_owned(), name: name.to_owned() });
    }
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| TokensError::Random(e.to_string()))?;
    let token = format!("alps_{}", URL_SAFE_NO_PAD.encode(random));
    let mut options = fs::OpenOptions::new();
    options.create(true).append(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    writeln!(file, "{} {} {}", token_hash(&token), role, name).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_tokens_authenticate_with_their_role_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let admin = create(&path, Role::Admin, "ops").unwrap();
        let reader = create(&path, Role::Predict, "dashboard").unwrap();
        assert!(admin.starts_with("alps_") && admin.len() == 48, "{admin}");
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&admin) && !text.contains(&reader), "only hashes are stored");
        let table = TokenTable::read(&path).unwrap();
        assert_eq!(table.authenticate(&admin), Some(Caller { name: "ops".into(), role: Role::Admin }));
        assert_eq!(table.authenticate(&reader).unwrap().role, Role::Predict);
        assert_eq!(table.authenticate("alps_guess"), None);
        assert_eq!(table.authenticate(""), None);
        assert!(matches!(create(&path, Role::Label, "ops"), Err(TokensError::DuplicateName { .. })));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn malformed_lines_are_named() {
        let path = Path::new("t");
        for (text, line) in [
            ("abc admin x", 1),
            ("# c\n\n{h} root x", 3),
            ("{h} admin", 1),
            ("{h} admin a/b", 1),
            ("{h} admin x\n{h} label x", 2),
        ] {
            let text = text.replace("{h}", &"a".repeat(64));
            match TokenTable::parse(path, &text) {
                Err(TokensError::Syntax { line: got, .. }) => assert_eq!(got, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(TokenTable::parse(path, "# only comments\n").unwrap().len(), 0);
    }

    #[test]
    fn a_bad_rewrite_keeps_the_previous_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let token = create(&path, Role::Label, "bot").unwrap();
        let tokens = Tokens::open(path.clone()).unwrap();
        fs::write(&path, "garbage\n").unwrap();
        tokens.reload();
        assert!(tokens.authenticate(&token).is_some());
        fs::write(&path, "").unwrap();
        tokens.reload();
        assert!(tokens.authenticate(&token).is_none(), "an emptied file revokes every token");
    }
}
