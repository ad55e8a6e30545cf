//! Debian version order: ddslug against `dpkg --compare-versions` on 10,000 generated pairs.

use std::cmp::Ordering;
use std::io::Write;
use std::process::{Command, Stdio};

use ddslug::apt::version::DebVersion;

/// xorshift64: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick(&mut self, chars: &[u8]) -> char {
        chars[self.below(chars.len() as u64) as usize] as char
    }
}

fn part(rng: &mut Rng, alphabet: &[u8], max: u64) -> String {
    let len = 1 + rng.below(max);
    (0..len).map(|_| rng.pick(alphabet)).collect()
}

fn version(rng: &mut Rng) -> String {
    let mut v = String::new();
    if rng.below(4) == 0 {
        v += &format!("{}:", rng.below(3));
    }
    v.push(rng.pick(b"0123456789"));
    v += &part(rng, b"0123456789..~+ab", 7);
    if rng.below(3) != 0 {
        v += &format!("-{}", part(rng, b"0123456789.~+a", 4));
    }
    v
}

/// Small edits of a version, so many pairs are close (the interesting cases).
fn mutate(rng: &mut Rng, v: &str) -> String {
    let mut chars: Vec<char> = v.chars().collect();
    let i = 1 + rng.below(chars.len().max(2) as u64 - 1) as usize;
    match rng.below(4) {
        0 => chars.insert(i.min(chars.len()), rng.pick(b"0123456789~.a+")),
        1 if chars.len() > 2 && i < chars.len() => {
            if !matches!(chars[i], ':' | '-') {
                chars[i] = rng.pick(b"0123456789~a");
            }
        }
        2 => chars.push(rng.pick(b"~0a.")),
        _ => {
            if !v.contains('-') {
                chars.extend(format!("-{}", rng.below(10)).chars());
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn matches_dpkg_on_generated_pairs() {
    let mut rng = Rng(0x5EED_1234_ABCD_9876);
    let mut pairs = Vec::new();
    while pairs.len() < 10_000 {
        let a = version(&mut rng);
        let b = if rng.below(2) == 0 { mutate(&mut rng, &a) } else { version(&mut rng) };
        // Only pairs both sides accept: dpkg itself warns on malformed input.
        if a.parse::<DebVersion>().is_ok() && b.parse::<DebVersion>().is_ok() {
            pairs.push((a, b));
        }
    }
    // Two shells in parallel, one dpkg call (two for non-`lt`) per pair.
    let halves: Vec<&[(String, String)]> = pairs.chunks(pairs.len() / 2 + 1).collect();
    let handles: Vec<_> = halves
        .iter()
        .map(|chunk| {
            let mut script = String::new();
            for (a, b) in chunk.iter() {
                script += &format!(
                    "if dpkg --compare-versions '{a}' lt '{b}' 2>/dev/null; then echo lt; \
                     elif dpkg --compare-versions '{a}' eq '{b}' 2>/dev/null; then echo eq; else echo gt; fi\n"
                );
            }
            let mut child = Command::new("sh")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("sh and dpkg are needed for this test (.ci/run installs dpkg)");
            child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
            child
        })
        .collect();
    let mut verdicts = Vec::new();
    for child in handles {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        verdicts.extend(String::from_utf8(out.stdout).unwrap().lines().map(str::to_string));
    }
    assert_eq!(verdicts.len(), pairs.len(), "dpkg gave a verdict for every pair");
    let mut mismatches = Vec::new();
    let mut seen = [0usize; 3];
    for ((a, b), verdict) in pairs.iter().zip(&verdicts) {
        let ours = a.parse::<DebVersion>().unwrap().cmp(&b.parse::<DebVersion>().unwrap());
        seen[(ours as i32 + 1) as usize] += 1;
        let expected = match verdict.as_str() {
            "lt" => Ordering::Less,
            "eq" => Ordering::Equal,
            _ => Ordering::Greater,
        };
        if ours != expected {
            mismatches.push(format!("{a} vs {b}: dpkg {verdict}, ddslug {ours:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{} mismatches, first: {:?}", mismatches.len(), &mismatches[..mismatches.len().min(10)]);
    // The generator must exercise every outcome, or the test proves little.
    assert!(seen.iter().all(|&n| n > 100), "outcome counts (lt, eq, gt): {seen:?}");
}
