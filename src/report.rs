//! Build output in the Heroku style: `-----> ` topics, 7-space indented details,
//! ` !     ` warnings; sizes and durations in human units.

use std::io::Write;
use std::time::Duration;

/// Where build messages go.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reporter {
    /// Suppress human output (for `--json` runs).
    pub quiet: bool,
}

impl Reporter {
    /// A `-----> ` topic line.
    pub fn topic(&self, text: &str) {
        self.line(&format!("-----> {text}"));
    }

    /// An indented detail line.
    pub fn detail(&self, text: &str) {
        self.line(&format!("       {text}"));
    }

    /// A warning, shown even in quiet mode (on stderr then).
    pub fn warn(&self, text: &str) {
        if self.quiet {
            eprintln!(" !     {text}");
        } else {
            self.line(&format!(" !     {text}"));
        }
    }

    fn line(&self, text: &str) {
        if !self.quiet {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
        }
    }
}

/// `1.5 MB`-style sizes (decimal units, as Heroku prints slug sizes).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// `0.42 s`-style durations.
pub fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::bytes(999), "999 B");
        assert_eq!(super::bytes(1_500_000), "1.5 MB");
        assert_eq!(super::bytes(2_340_000_000), "2.3 GB");
    }
}
