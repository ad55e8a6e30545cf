//! The recipe parser and condition language: any text either parses or is refused with an
//! error; a parsed recipe evaluates under every option set without panicking, and its globs
//! never name a path outside the root.
#![no_main]

use ddslug::unpack::recipe::{Options, Recipe, eval, glob_match};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let options = [
        Options { version: vec![7, 81, 2], major: 7, python: 3, apm: true, process_agent: false },
        Options { version: vec![6, 13], major: 6, python: 2, apm: false, process_agent: true },
        Options { version: vec![], major: 0, python: 0, apm: false, process_agent: false },
    ];
    for o in &options {
        let _ = eval(text, o);
    }
    if let Ok(recipe) = Recipe::parse(text, "fuzz") {
        for o in &options {
            let rules = recipe.active_rules(o).expect("a parsed recipe evaluates under any options");
            for rule in rules {
                for glob in rule.remove.iter().chain(&rule.keep).chain(rule.rename.iter().flatten()) {
                    assert!(!glob.starts_with('/') && !glob.split('/').any(|c| c == ".."), "{glob:?} leaves the root");
                    let _ = glob_match(glob, b"opt/datadog-agent/embedded/lib/x.a");
                }
            }
        }
    }
});
