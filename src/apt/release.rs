//! Release files (the body of InRelease, or Release): the SHA-256 and size of every index,
//! and the dates that bound how long the file may be trusted. The signature is checked
//! before this module sees the text (see `signature.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::apt::deb822;
use crate::hash::Sha256;
use crate::report::excerpt;

/// One index file listed in Release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexFile {
    /// Path relative to `dists/<suite>/`.
    pub path: String,
    pub size: u64,
    pub sha256: Sha256,
}

/// The fields ddslug uses.
#[derive(Clone, Debug)]
pub struct Release {
    pub suite: Option<String>,
    pub codename: Option<String>,
    pub date: Option<SystemTime>,
    pub valid_until: Option<SystemTime>,
    pub architectures: Vec<String>,
    pub components: Vec<String>,
    pub sha256: Vec<IndexFile>,
}

/// The Release file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{url}: {reason}")]
    Invalid { url: String, reason: String },
    #[error(
        "{url} expired on {until} (Valid-Until); the mirror is stale or this machine's clock is wrong: \
         use a current mirror or fix the clock"
    )]
    Expired { url: String, until: String },
}

/// Parses the text of a Release file. `url` names it in errors.
pub fn parse_release(text: &str, url: &str) -> Result<Release, ReleaseError> {
    let invalid = |reason: String| ReleaseError::Invalid { url: url.into(), reason };
    let stanzas = deb822::parse(text).map_err(|e| invalid(e.to_string()))?;
    let Some(s) = stanzas.first() else {
        return Err(invalid("the Release file is empty".into()));
    };
    let date = |name: &str| -> Result<Option<SystemTime>, ReleaseError> {
        s.get(name).map(|v| parse_date(v).ok_or_else(|| invalid(format!("{name} {:?} is not a date", excerpt(v, 80))))).transpose()
    };
    let words = |name: &str| s.get(name).map(|v| v.split_whitespace().map(str::to_string).collect()).unwrap_or_default();
    let mut sha256 = Vec::new();
    for line in s.lines("SHA256") {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [hash, size, path] = parts[..] else {
            return Err(invalid(format!("SHA256 line {:?} is not `<hash> <size> <path>`", excerpt(line, 200))));
        };
        sha256.push(IndexFile {
            path: path.to_string(),
            size: size.parse().map_err(|_| invalid(format!("size {:?} is not a number", excerpt(size, 80))))?,
            sha256: hash.parse().map_err(|e| invalid(excerpt(&format!("{e}"), 200)))?,
        });
    }
    if sha256.is_empty() {
        return Err(invalid("no SHA256 field: ddslug needs SHA-256 sums to check indexes".into()));
    }
    Ok(Release {
        suite: s.get("Suite").map(str::to_string),
        codename: s.get("Codename").map(str::to_string),
        date: date("Date")?,
        valid_until: date("Valid-Until")?,
        architectures: words("Architectures"),
        components: words("Components"),
        sha256,
    })
}

impl Release {
    /// Fails when `now` is past Valid-Until.
    pub fn check_valid_until(&self, now: SystemTime, url: &str) -> Result<(), ReleaseError> {
        match self.valid_until {
            Some(until) if now > until => {
                let secs = until.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                Err(ReleaseError::Expired { url: url.into(), until: format_date(secs) })
            }
            _ => Ok(()),
        }
    }

    /// `<component>/binary-<arch>/Packages` in the forms Release lists, best first
    /// (`.xz`, then `.gz`, then uncompressed).
    pub fn packages_index_candidates(&self, component: &str, arch: &str) -> Vec<&IndexFile> {
        let base = format!("{component}/binary-{arch}/Packages");
        [".xz", ".gz", ""]
            .iter()
            .filter_map(|suffix| {
                let path = format!("{base}{suffix}");
                self.sha256.iter().find(|f| f.path == path)
            })
            .collect()
    }
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// Parses `Sat, 10 May 2025 08:53:20 UTC` (also `+0000`/`-0130` offsets, no weekday).
pub fn parse_date(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let text = text.split_once(',').map(|(_, rest)| rest.trim()).unwrap_or(text);
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [day, month, year, time, zone] = parts[..] else { return None };
    let day: i64 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as i64 + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = hms[..] else { return None };
    let offset = match zone {
        "UTC" | "GMT" | "Z" => 0,
        z if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let hours: i64 = z[1..3].parse().ok()?;
            let mins: i64 = z[3..5].parse().ok()?;
            let total = hours * 3600 + mins * 60;
            if z.starts_with('-') { -total } else { total }
        }
        _ => return None,
    };
    if !(1..=31).contains(&day) || !(0..24).contains(&h) || !(0..60).contains(&m) || !(0..=60).contains(&s) {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s - offset;
    u64::try_from(secs).ok().map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Formats seconds since the epoch as `2025-05-10 08:53:20 UTC`.
fn format_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (y, mo, d) = civil_from_days(days);
    let rem = secs % 86_400;
    format!("{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem / 60 % 60, rem % 60)
}

// Howard Hinnant's days_from_civil / civil_from_days.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of the civil date `z` days after 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "Origin: Debian\nSuite: stable\nCodename: bookworm\nDate: Sat, 10 May 2025 08:53:20 UTC\n\
Valid-Until: Sat, 17 May 2025 08:53:20 +0000\nArchitectures: amd64 arm64\nComponents: main contrib\n\
SHA256:\n e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 main/binary-amd64/Packages\n \
e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 20 main/binary-amd64/Packages.gz\n \
e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 30 main/binary-amd64/Packages.xz\n";

    #[test]
    fn fields_and_preference() {
        let r = parse_release(TEXT, "u").unwrap();
        assert_eq!(r.codename.as_deref(), Some("bookworm"));
        assert_eq!(r.components, vec!["main", "contrib"]);
        let c: Vec<&str> = r.packages_index_candidates("main", "amd64").iter().map(|f| f.path.as_str()).collect();
        assert_eq!(c, vec!["main/binary-amd64/Packages.xz", "main/binary-amd64/Packages.gz", "main/binary-amd64/Packages"]);
        assert!(r.packages_index_candidates("main", "i386").is_empty());
    }

    #[test]
    fn dates() {
        // 2025-05-10 08:53:20 UTC is 1746867200 seconds after the epoch.
        let t = parse_date("Sat, 10 May 2025 08:53:20 UTC").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1_746_867_200);
        let t2 = parse_date("10 May 2025 10:53:20 +0200").unwrap();
        assert_eq!(t, t2);
        assert!(parse_date("yesterday").is_none());
        assert_eq!(format_date(1_746_867_200), "2025-05-10 08:53:20 UTC");
    }

    #[test]
    fn valid_until() {
        let r = parse_release(TEXT, "u").unwrap();
        let before = UNIX_EPOCH + Duration::from_secs(1_746_867_200);
        assert!(r.check_valid_until(before, "u").is_ok());
        let after = UNIX_EPOCH + Duration::from_secs(1_746_867_200 + 8 * 86_400);
        let e = r.check_valid_until(after, "u").unwrap_err().to_string();
        assert!(e.contains("expired on 2025-05-17 08:53:20 UTC"), "{e}");
    }
}
