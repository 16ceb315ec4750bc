//! Time as the outputs show it: Indian Standard Time (+05:30), ISO 8601 with
//! milliseconds, e.g. `2026-11-22T15:04:05.123+05:30`; and a compact UTC
//! stamp for object names, e.g. `20261122T093405123Z`.

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};

const IST_OFFSET_SECONDS: i32 = 5 * 3600 + 30 * 60;

fn ist() -> FixedOffset {
    FixedOffset::east_opt(IST_OFFSET_SECONDS).expect("valid offset")
}

/// Formats an instant as the outputs' IST timestamp.
pub fn ist_timestamp(at: DateTime<Utc>) -> String {
    at.with_timezone(&ist())
        .to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// The current time as an IST timestamp.
pub fn now_ist() -> String {
    ist_timestamp(Utc::now())
}

/// Seconds since the Unix epoch, with fractions (metrics' timestamps).
pub fn unix_seconds() -> f64 {
    Utc::now().timestamp_micros() as f64 / 1e6
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A sortable UTC stamp for object names.
pub fn name_stamp(at: DateTime<Utc>) -> String {
    at.format("%Y%m%dT%H%M%S%3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn formats_ist_with_milliseconds_and_offset() {
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 9, 34, 5).unwrap()
            + chrono::Duration::milliseconds(123);
        assert_eq!(ist_timestamp(at), "2026-11-22T15:04:05.123+05:30");
        assert_eq!(name_stamp(at), "20261122T093405123Z");
    }
}
