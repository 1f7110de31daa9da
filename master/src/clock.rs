//! Wall-clock formatting in UTC, computed from `SystemTime` by hand (no time-zone database:
//! logs and reports are in UTC, like the `Z` says).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Civil date (year, month 1..=12, day 1..=31) of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of (March-based) year
    let mp = (5 * doy + 2) / 153; // March-based month, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Seconds and milliseconds since the epoch (negative times clamp to the epoch).
fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO)
}

/// `2026-11-21T22:45:01.123Z`: the log line timestamp.
pub fn utc_millis(t: SystemTime) -> String {
    let d = since_epoch(t);
    format!("{}.{:03}Z", utc_base(d.as_secs()), d.subsec_millis())
}

/// `2026-11-21T22:45:01Z`: the report timestamp.
pub fn utc_seconds(t: SystemTime) -> String {
    format!("{}Z", utc_base(since_epoch(t).as_secs()))
}

fn utc_base(secs: u64) -> String {
    let secs = secs as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `3 days 04:05:06`: an uptime.
pub fn duration_dhms(d: Duration) -> String {
    let s = d.as_secs();
    format!(
        "{} days {:02}:{:02}:{:02}",
        s / 86_400,
        s % 86_400 / 3600,
        s % 3600 / 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn known_instants() {
        assert_eq!(utc_millis(at(0, 0)), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a leap century) 12:34:56.
        assert_eq!(utc_millis(at(951_827_696, 7)), "2000-02-29T12:34:56.007Z");
        // 2026-11-21T22:45:01Z
        assert_eq!(utc_seconds(at(1_795_301_101, 0)), "2026-11-21T22:45:01Z");
        // Last second of 1999 and of a non-leap February.
        assert_eq!(utc_seconds(at(946_684_799, 0)), "1999-12-31T23:59:59Z");
        assert_eq!(utc_seconds(at(1_677_628_799, 0)), "2023-02-28T23:59:59Z");
    }

    #[test]
    fn every_day_follows_the_last() {
        let mut prev = civil_from_days(-1);
        for day in 0..(400 * 366) {
            let cur = civil_from_days(day);
            if cur.2 != 1 {
                assert_eq!((cur.0, cur.1, cur.2 - 1), prev);
            } else if cur.1 != 1 {
                assert_eq!((cur.0, cur.1 - 1), (prev.0, prev.1));
            } else {
                assert_eq!((cur.0 - 1, 12, 31), prev);
            }
            prev = cur;
        }
    }

    #[test]
    fn uptime() {
        assert_eq!(
            duration_dhms(Duration::from_secs(3 * 86_400 + 4 * 3600 + 5 * 60 + 6)),
            "3 days 04:05:06"
        );
    }
}
