//! Regenerates `tests/data/classic/*.json`: the trees the classic Datadog buildpack's
//! bin/compile produces against the test agent repository, one per settings case.
//!
//! Not part of the suite (it needs the classic buildpack, which this project does not ship).
//! To run it, extract the classic buildpack's `bin/`, `etc/` and `extra/` into a directory and:
//!
//! ```sh
//! CLASSIC_BUILDPACK=/path/to/classic cargo test --test classic_oracle -- --ignored
//! ```
//!
//! The classic script fetches Datadog's keys with curl and reads its apt source from `etc/`:
//! the harness runs a copy whose `etc/*.list` name the served repository and puts a `curl`
//! first on PATH that hands out the test repository's key instead. apt-get and dpkg run
//! for real.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{CASES, Served, expected_path, normalized_tree};

#[test]
#[ignore = "needs CLASSIC_BUILDPACK (see the module docs)"]
fn regenerate_classic_trees() {
    let classic = std::env::var("CLASSIC_BUILDPACK").expect("set CLASSIC_BUILDPACK to the classic buildpack's directory");
    let served = Served::start();
    let work = served.dir.path();
    // A private copy of the classic buildpack pointing at the served repository.
    let copy = work.join("classic");
    assert!(Command::new("cp").arg("-r").arg(&classic).arg(&copy).status().unwrap().success());
    for (file, component) in [("datadog.list", "6"), ("datadog7.list", "7")] {
        let line = format!("deb [signed-by=SIGNED_BY_PLACEHOLDER] {}/ stable {component}\n", served.server.url());
        fs::write(copy.join("etc").join(file), line).unwrap();
    }
    let fake_bin = work.join("fake-bin");
    fs::create_dir_all(&fake_bin).unwrap();
    let curl = format!(
        "#!/bin/sh\n# Stand-in for curl -o FILE URL: hands out the test repository's key.\n\
         while [ $# -gt 0 ]; do case \"$1\" in -o) out=\"$2\"; shift;; esac; shift; done\n\
         cp '{}' \"$out\"\n",
        served.fixture.keyring.display()
    );
    fs::write(fake_bin.join("curl"), curl).unwrap();
    assert!(Command::new("chmod").arg("+x").arg(fake_bin.join("curl")).status().unwrap().success());
    let path = format!("{}:{}", fake_bin.display(), std::env::var("PATH").unwrap_or_default());

    for (case, settings) in CASES {
        // The classic script edits its own etc/datadog.list: start each case from a clean copy.
        let case_copy = work.join(format!("classic-{case}"));
        assert!(Command::new("cp").arg("-r").arg(&copy).arg(&case_copy).status().unwrap().success());
        let build = served.build_dir(case);
        let cache = work.join(format!("cache-{case}"));
        let env = served.env_dir(case, settings);
        let out = Command::new("bash")
            .arg(case_copy.join("bin/compile"))
            .arg(&build)
            .arg(&cache)
            .arg(&env)
            .env("PATH", &path)
            .env("STACK", "heroku-24")
            .output()
            .unwrap();
        assert!(out.status.success(), "classic compile failed for {case}: {}", common::text(&out));
        let tree = normalized_tree(&build.join(".apt"));
        let json = serde_json::to_string_pretty(&tree).unwrap() + "\n";
        fs::write(expected_path(case), json).unwrap();
        println!("{case}: {} entries", tree.len());
    }
    let _ = Path::new("");
}
