//! Build output in the Heroku style: `-----> ` topics, 7-space indented details,
//! ` !     ` warnings; sizes and durations in human units; and the helpers that keep a
//! message short whatever the input (an excerpt of a long value, the first few of a list).

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

    /// A progress or retry note: a detail line, or on stderr in quiet mode (where stdout
    /// carries a result, such as a version list or JSON).
    pub fn progress(&self, text: &str) {
        if self.quiet {
            eprintln!("ddslug: {text}");
        } else {
            self.detail(text);
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

/// Limits as they are written in the code: `16 MiB`, `64 KiB` (binary units when exact).
pub fn limit(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// At most `max` characters of `text` (cut at a character boundary), saying how much was
/// left out: a value from outside can be megabytes long, a message must not be.
pub fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}… ({} more bytes)", &text[..cut], text.len() - cut),
    }
}

/// The first `max` items joined with `, `, then how many more there are.
pub fn first_of<T: std::fmt::Display>(items: impl ExactSizeIterator<Item = T>, max: usize) -> String {
    let total = items.len();
    let shown: Vec<String> = items.take(max).map(|i| i.to_string()).collect();
    match total.saturating_sub(shown.len()) {
        0 => shown.join(", "),
        more => format!("{}, … and {more} more", shown.join(", ")),
    }
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
        assert_eq!(super::limit(16 << 20), "16 MiB");
        assert_eq!(super::limit(64 << 10), "64 KiB");
        assert_eq!(super::limit(1000), "1000 bytes");
    }

    #[test]
    fn long_values_are_cut_and_counted() {
        assert_eq!(super::excerpt("short", 10), "short");
        assert_eq!(super::excerpt("é".repeat(30).as_str(), 2), "éé… (56 more bytes)");
        assert_eq!(super::first_of(1u8..=3, 5), "1, 2, 3");
        assert_eq!(super::first_of(1u8..=30, 2), "1, 2, … and 28 more");
    }
}
