//! The on-disk layout of flowlens Parquet output, in one place: the Parquet and S3 sinks write
//! it, `flowlens report` and `flowlens top` read it.
//!
//! ```text
//! DIR/date=YYYY-MM-DD/hour=HH/flows-HOST-MS-PID-SEQ.parquet            complete file
//! DIR/date=YYYY-MM-DD/hour=HH/.flows-HOST-MS-PID-SEQ.parquet.inprogress being written
//! ```
//!
//! Partitions are Hive-style, by each record's `flow_end` in UTC. `HOST` is the exporter's
//! hostname (it may contain `-`), `MS` the Unix time in milliseconds when the file was opened,
//! `PID` the writer's process id, `SEQ` a per-process counter (at least 4 digits). A file is
//! written under its hidden in-progress name and renamed when complete, so readers, which skip
//! names starting with `.`, never see a partial file.

use std::path::Path;

/// Microseconds in an hour and in a day.
pub const HOUR_US: i64 = 3_600_000_000;
pub const DAY_US: i64 = 24 * HOUR_US;

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01: the inverse of [`civil_from_days`]
/// (`days_from_civil`). `month` 1-12, `day` 1-31 (not checked against the month).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let (m, d) = (m as i64, d as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One hour partition: `date=YYYY-MM-DD/hour=HH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition {
    /// Days since 1970-01-01.
    pub day: i64,
    /// 0-23.
    pub hour: u32,
}

impl Partition {
    /// The partition of a timestamp in µs since the epoch (UTC).
    pub fn of_us(us: i64) -> Partition {
        let secs = us.div_euclid(1_000_000);
        Partition {
            day: secs.div_euclid(86_400),
            hour: (secs.rem_euclid(86_400) / 3600) as u32,
        }
    }

    /// `[start, end)` in µs since the epoch.
    pub fn interval_us(&self) -> (i64, i64) {
        let start = self.day * DAY_US + self.hour as i64 * HOUR_US;
        (start, start + HOUR_US)
    }

    /// The relative directory, `date=YYYY-MM-DD/hour=HH`.
    pub fn dir(&self) -> String {
        let (y, m, d) = civil_from_days(self.day);
        format!("date={y:04}-{m:02}-{d:02}/hour={:02}", self.hour)
    }
}

/// `date=YYYY-MM-DD/hour=HH` for a timestamp in µs since the epoch.
pub fn partition_path(us: i64) -> String {
    Partition::of_us(us).dir()
}

/// Days since the epoch of `YYYY-MM-DD` (the value of a `date=` component).
pub fn parse_date(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// Whether a directory name is a partition component (`date=…` or `hour=…`).
pub fn is_partition_component(name: &str) -> bool {
    name.starts_with("date=") || name.starts_with("hour=")
}

/// `[start, end)` in µs of the partition a path lies in: its last `date=YYYY-MM-DD` component
/// and an `hour=HH` after it (the whole day without one). `None` if the path has no valid
/// `date=` component.
pub fn interval_of_path(path: &Path) -> Option<(i64, i64)> {
    let mut day: Option<i64> = None;
    let mut hour: Option<u32> = None;
    for c in path.components() {
        let c = c.as_os_str().to_string_lossy();
        if let Some(d) = c.strip_prefix("date=") {
            day = parse_date(d);
            hour = None;
        } else if let Some(h) = c.strip_prefix("hour=") {
            hour = h.parse::<u32>().ok().filter(|h| *h < 24);
        }
    }
    let day = day?;
    Some(match hour {
        Some(hour) => Partition { day, hour }.interval_us(),
        None => (day * DAY_US, (day + 1) * DAY_US),
    })
}

/// Whether a reader should read this file name: a complete `.parquet` file, not hidden.
pub fn is_data_file(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(".parquet")
}

/// The parts of a flowlens file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileName {
    pub host: String,
    /// Unix time in milliseconds when the file was opened.
    pub opened_ms: u64,
    pub pid: u32,
    pub seq: u64,
}

const PREFIX: &str = "flows-";
const SUFFIX: &str = ".parquet";
const IN_PROGRESS: &str = ".inprogress";

impl FileName {
    /// `flows-HOST-MS-PID-SEQ.parquet`
    pub fn complete(&self) -> String {
        format!(
            "{PREFIX}{}-{}-{}-{:04}{SUFFIX}",
            self.host, self.opened_ms, self.pid, self.seq
        )
    }

    /// `.flows-HOST-MS-PID-SEQ.parquet.inprogress`
    pub fn in_progress(&self) -> String {
        format!(".{}{IN_PROGRESS}", self.complete())
    }

    /// Parses a complete file name (see [`FileName::complete`]).
    pub fn parse(name: &str) -> Option<FileName> {
        Self::parse_stem(name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?)
    }

    /// Parses an in-progress file name (see [`FileName::in_progress`]).
    pub fn parse_in_progress(name: &str) -> Option<FileName> {
        let complete = name.strip_prefix('.')?.strip_suffix(IN_PROGRESS)?;
        Self::parse(complete)
    }

    /// `HOST-MS-PID-SEQ`; HOST may contain `-`, so split from the right.
    fn parse_stem(stem: &str) -> Option<FileName> {
        let mut parts = stem.rsplitn(4, '-');
        let seq = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let opened_ms = parts.next()?.parse().ok()?;
        let host = parts.next()?;
        if host.is_empty() {
            return None;
        }
        Some(FileName {
            host: host.to_string(),
            opened_ms,
            pid,
            seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_both_ways() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for day in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day, "{y}-{m}-{d}");
        }
    }

    /// What the sinks write, the report parses back to the same hour.
    #[test]
    fn partitions_round_trip() {
        // 2026-11-26T06:44:03Z
        let us = 1_795_675_443_000_000;
        assert_eq!(partition_path(us), "date=2026-11-26/hour=06");
        let p = Partition::of_us(us);
        let (a, b) = p.interval_us();
        assert!(a <= us && us < b && b - a == HOUR_US);
        let path = format!("/x/{}/f.parquet", p.dir());
        assert_eq!(interval_of_path(Path::new(&path)), Some((a, b)));
        // Before the epoch too.
        let p = Partition::of_us(-1);
        assert_eq!(p.dir(), "date=1969-12-31/hour=23");
        assert_eq!(interval_of_path(Path::new(&p.dir())), Some(p.interval_us()));
        // A date alone is the whole day; bad components are ignored or refused.
        let day = interval_of_path(Path::new("/x/date=2026-11-26")).unwrap();
        assert_eq!(day.1 - day.0, DAY_US);
        assert_eq!(
            interval_of_path(Path::new("/x/date=2026-11-26/hour=24")),
            Some(day)
        );
        assert_eq!(interval_of_path(Path::new("/x/date=2026-13-01")), None);
        assert_eq!(interval_of_path(Path::new("/x/y")), None);
        assert!(is_partition_component("date=2026-11-26"));
        assert!(!is_partition_component("x=1"));
    }

    #[test]
    fn file_names_round_trip() {
        let f = FileName {
            host: "web-01.example".into(),
            opened_ms: 1_795_675_443_123,
            pid: 4242,
            seq: 7,
        };
        assert_eq!(
            f.complete(),
            "flows-web-01.example-1795675443123-4242-0007.parquet"
        );
        assert_eq!(
            f.in_progress(),
            ".flows-web-01.example-1795675443123-4242-0007.parquet.inprogress"
        );
        assert_eq!(FileName::parse(&f.complete()), Some(f.clone()));
        assert_eq!(
            FileName::parse_in_progress(&f.in_progress()),
            Some(f.clone())
        );
        assert_eq!(FileName::parse(&f.in_progress()), None);
        assert_eq!(FileName::parse_in_progress(&f.complete()), None);
        assert_eq!(FileName::parse("flows-1-2-3.parquet"), None);
        assert!(is_data_file(&f.complete()));
        assert!(!is_data_file(&f.in_progress()));
        assert!(!is_data_file("flows.csv"));
    }
}
