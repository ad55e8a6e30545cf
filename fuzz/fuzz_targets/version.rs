//! Debian version order: ddslug's `DebVersion` against a plain reference port of dpkg's
//! `verrevcmp` (lib/dpkg/version.c), written here as directly as possible, and the laws of
//! a total order (antisymmetry, consistency with equality of the parsed parts).
#![no_main]

use std::cmp::Ordering;

use ddslug::apt::version::DebVersion;
use libfuzzer_sys::fuzz_target;

/// dpkg's `order()`: `~` before everything, then the end, then letters, then the rest.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

/// dpkg's `verrevcmp`, over byte strings.
fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let mut first_diff = 0;
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied());
            let bc = order(b.get(j).copied());
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == 0 {
                first_diff = a[i] as i32 - b[j] as i32;
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != 0 {
            return first_diff.cmp(&0);
        }
    }
    Ordering::Equal
}

fn reference(a: &DebVersion, b: &DebVersion) -> Ordering {
    a.epoch()
        .cmp(&b.epoch())
        .then_with(|| verrevcmp(a.upstream().as_bytes(), b.upstream().as_bytes()))
        .then_with(|| verrevcmp(a.revision().as_bytes(), b.revision().as_bytes()))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some((a, b)) = text.split_once('\n') else { return };
    let (Ok(va), Ok(vb)) = (a.parse::<DebVersion>(), b.parse::<DebVersion>()) else { return };
    let ours = va.cmp(&vb);
    assert_eq!(ours, reference(&va, &vb), "{a:?} vs {b:?}");
    assert_eq!(vb.cmp(&va), ours.reverse(), "antisymmetry: {a:?} vs {b:?}");
    assert_eq!(va.cmp(&va), Ordering::Equal);
    // Displays as the text it was parsed from, less surrounding whitespace (parsing trims it).
    assert_eq!(va.to_string(), a.trim());
});
