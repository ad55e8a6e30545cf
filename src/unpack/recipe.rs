//! The strip recipe: which paths of the unpacked agent a given configuration removes, and why.
//!
//! A recipe is data (`recipes/datadog-agent.toml`), not code:
//!
//! ```toml
//! format = 1
//! [[rule]]
//! name = "docs"                      # printed in the build log
//! why = "documentation is not needed on a dyno"
//! when = "always"                    # or e.g. "major == 6 or version < 7.68"
//! remove = ["opt/datadog-agent/embedded/share/doc"]   # globs relative to the .apt root
//! keep = []                          # exceptions to `remove`
//! ```
//!
//! Globs: `*` and `?` match within one path component, `**` matches any number of
//! components. Paths are matched as bytes, exactly as the package names them (`?` is one
//! byte; a name that is not UTF-8 is matched like any other). A matched directory is removed with everything below it. Conditions read
//! `version` (compared numerically, component by component: `7.52` means `7.52.0`), `major`,
//! `python`, `apm` and `process_agent`, combined with `and`, `or`, `not` and parentheses.
//!
//! Here: the recipe as data (its file, rules, options, errors) and its validation;
//! `condition` is the `when` language, `strip` matches globs against paths and removes
//! (while unpacking, [`StripFilter`], and afterwards, [`Recipe::apply`]).
//!
//! Contract: applying a recipe only ever deletes and renames paths under the given root,
//! through directory descriptors that never follow a symlink (one on the way is an error
//! naming it); the result depends only on the tree, the recipe text and the [`Options`].

use std::path::PathBuf;

mod condition;
mod strip;

pub use condition::{cmp_version, eval};
pub use strip::{StripFilter, glob_match, merge_outcomes};

/// The options a recipe may read. Everything here is part of the layer key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Options {
    /// Numeric components of the agent's upstream version, e.g. `[7, 81, 2]`.
    pub version: Vec<u64>,
    pub major: u64,
    pub python: u64,
    pub apm: bool,
    pub process_agent: bool,
}

/// Why a recipe could not be loaded or applied.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("recipe {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("recipe {path}, rule {rule:?}: condition {when:?}: {reason}")]
    Condition { path: String, rule: String, when: String, reason: String },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error(
        "recipe rule {rule:?}: {path} lies beyond the symlink {link} (to {target}); ddslug never removes or \
         renames through a symlink, so the package is refused. Use a package without that symlink"
    )]
    Symlink { rule: String, path: String, link: String, target: String },
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    format: u32,
    #[serde(rename = "rule", default)]
    rules: Vec<Rule>,
}

/// One named rule of the recipe.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub why: String,
    #[serde(default = "always")]
    pub when: String,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub keep: Vec<String>,
    /// `[from, to]` pairs: `from` replaces `to` when it exists (like `mv -f`).
    #[serde(default)]
    pub rename: Vec<[String; 2]>,
}

fn always() -> String {
    "always".into()
}

/// A parsed, validated recipe and the exact text it came from.
#[derive(Clone, Debug)]
pub struct Recipe {
    pub text: String,
    pub rules: Vec<Rule>,
    source: String,
}

/// What one rule removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleOutcome {
    pub rule: String,
    pub why: String,
    /// Top-most removed paths, relative to the root.
    pub paths: Vec<String>,
    pub files: u64,
    pub bytes: u64,
}

impl Recipe {
    /// Parses recipe text; `source` names it in errors. Conditions are checked here so that
    /// a typo fails every build, not only the builds whose options reach it.
    pub fn parse(text: &str, source: &str) -> Result<Recipe, RecipeError> {
        let file: RecipeFile =
            toml::from_str(text).map_err(|e| RecipeError::Invalid { path: source.into(), reason: e.to_string() })?;
        if file.format != 1 {
            return Err(RecipeError::Invalid {
                path: source.into(),
                reason: format!("format {} is not supported (expected 1)", file.format),
            });
        }
        let probe = Options { version: vec![7, 0, 0], major: 7, python: 3, apm: true, process_agent: false };
        for rule in &file.rules {
            eval(&rule.when, &probe).map_err(|reason| RecipeError::Condition {
                path: source.into(),
                rule: rule.name.clone(),
                when: rule.when.clone(),
                reason,
            })?;
            let renames = rule.rename.iter().flatten();
            for glob in rule.remove.iter().chain(&rule.keep).chain(renames) {
                if glob.starts_with('/') || glob.split('/').any(|c| c == ".." || c.is_empty()) {
                    return Err(RecipeError::Invalid {
                        path: source.into(),
                        reason: format!("rule {:?}: {glob:?} must be a relative path without `..`", rule.name),
                    });
                }
            }
        }
        Ok(Recipe { text: text.into(), rules: file.rules, source: source.into() })
    }

    /// The rules that apply to these options, in recipe order.
    pub fn active_rules(&self, options: &Options) -> Result<Vec<&Rule>, RecipeError> {
        let mut active = Vec::new();
        for rule in &self.rules {
            let on = eval(&rule.when, options).map_err(|reason| RecipeError::Condition {
                path: self.source.clone(),
                rule: rule.name.clone(),
                when: rule.when.clone(),
                reason,
            })?;
            if on {
                active.push(rule);
            }
        }
        Ok(active)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Options for a version and Python, APM off, the process agent on.
    pub(crate) fn opts(version: &[u64], python: u64) -> Options {
        Options { version: version.to_vec(), major: version[0], python, apm: false, process_agent: true }
    }

    #[test]
    fn bad_recipes_are_refused() {
        assert!(Recipe::parse("format = 2", "t").is_err());
        let bad = "format = 1\n[[rule]]\nname='x'\nwhy='y'\nwhen='major >< 6'\nremove=['a']\n";
        assert!(matches!(Recipe::parse(bad, "t"), Err(RecipeError::Condition { .. })));
        let escape = "format = 1\n[[rule]]\nname='x'\nwhy='y'\nremove=['../etc']\n";
        assert!(Recipe::parse(escape, "t").is_err());
    }
}
