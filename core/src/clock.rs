//! Wall-clock time in the unit of every stored and reported timestamp: milliseconds since the
//! Unix epoch (`*_unix_ms` fields). A leaf module, so that domain types and the store can share it.

use std::time::{SystemTime, UNIX_EPOCH};

/// `time` as milliseconds since the Unix epoch (0 before the epoch, `i64::MAX` far after it).
pub fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    unix_ms(SystemTime::now())
}
