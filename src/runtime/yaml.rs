//! YAML written at dyno start: datadog.yaml from the package's datadog.yaml.example, edited
//! line by line the way the classic start script edits it, and the scalars of the
//! integration configs.
//!
//! Contract: every value that comes from the environment (paths under HOME, URL parts) is
//! written by [`quote`], which gives a double-quoted scalar that any YAML 1.1 or 1.2 parser
//! reads back as exactly that string: nothing in a value can end the scalar, start a key, a
//! comment, an anchor, a tag or a document, or be read as a number, a boolean or null. A value
//! YAML cannot hold for the agent (a NUL) is refused, and the caller names the variable.

/// A value that cannot go into the agent's YAML.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("it contains a NUL character, which the agent's configuration cannot hold")]
pub struct Unrepresentable;

/// `value` as a YAML double-quoted scalar. The output is printable ASCII only: `\` and `"`
/// are escaped, and so is every other character outside `' '..='~'` (`\t`, `\n`, `\r` by
/// name, the rest as `\xXX`, `\uXXXX` or `\UXXXXXXXX`). ASCII-only output avoids the places
/// where YAML 1.1 and 1.2 differ (U+0085, U+2028 and U+2029 are line breaks in 1.1, a BOM
/// inside a document) and any doubt about the file's encoding.
pub fn quote(value: &str) -> Result<String, Unrepresentable> {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\0' => return Err(Unrepresentable),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02X}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    Ok(out)
}

/// A port or database number as the classic wrote it (a YAML integer) when it is one in
/// canonical decimal form, so that the integration reads the same type; anything else is
/// quoted, so it reads back as the exact string.
pub fn number_or_quote(value: &str) -> Result<String, Unrepresentable> {
    let canonical = !value.is_empty()
        && value.len() <= 9
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'));
    if canonical { Ok(value.to_string()) } else { quote(value) }
}

/// What to write into datadog.yaml.
pub struct YamlSettings<'a> {
    pub conf_dir: &'a str,
    pub run_dir: &'a str,
    pub apm_log: &'a str,
    pub process_log: Option<&'a str>,
    /// `python_version: 3` for agent 6 running Python 3.
    pub python3_on_agent6: bool,
}

/// Applies the edits to the example text. Fails only when a path holds a NUL.
pub fn edit(example: &str, s: &YamlSettings) -> Result<String, Unrepresentable> {
    let q = |path: &str| quote(path);
    let (confd, checksd, run) = (q(&format!("{}/conf.d", s.conf_dir))?, q(&format!("{}/checks.d", s.conf_dir))?, q(s.run_dir)?);
    let apm_log = q(s.apm_log)?;
    let process_log = s.process_log.map(q).transpose()?;
    let mut out = String::with_capacity(example.len() + 512);
    for line in example.lines() {
        let trimmed = line.trim_start_matches(['#', ' ']);
        if trimmed.starts_with("confd_path:") {
            out += &format!("confd_path: {confd}\n");
        } else if trimmed.starts_with("additional_checksd:") {
            out += &format!("additional_checksd: {checksd}\nrun_path: {run}\n");
        } else if trimmed.starts_with("cloud_provider_metadata:") {
            out += "cloud_provider_metadata: []\n";
        } else if line == "# apm_config:" || line == "apm_config:" {
            out += &format!("apm_config:\n  log_file: {apm_log}\n");
        } else if let (true, Some(log)) = (line == "# process_config:" || line == "process_config:", &process_log) {
            out += &format!("process_config:\n  enabled: true\n  log_file: {log}\n");
        } else if line == "# logs_config:" || line == "logs_config:" {
            out += &format!("logs_config:\n  run_path: {run}\n");
        } else {
            out += line;
            out.push('\n');
        }
    }
    if s.python3_on_agent6 {
        out += "python_version: 3\n";
    }
    Ok(out)
}

/// The install_info file the agent reports.
pub fn install_info(buildpack_version: &str) -> Result<String, Unrepresentable> {
    Ok(format!(
        "install_method:\n  tool: heroku\n  tool_version: heroku\n  installer_version: {}\n",
        quote(&format!("heroku-{buildpack_version}"))?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use yaml_rust2::{Yaml, YamlLoader};

    /// Values chosen to break a YAML writer that pastes text: structure, indicators, scalars
    /// that resolve to other types, escapes, line breaks of both YAML versions, unicode.
    pub const HOSTILE: &[&str] = &[
        "",
        " ",
        "plain",
        "a\nb: c",
        "x\n  - host: evil\n    password: y",
        "p: w",
        "p:w",
        "#comment",
        "p #not a comment",
        "{a: 1}",
        "[1, 2]",
        "*alias",
        "&anchor x",
        "!tag x",
        "!!binary aGk=",
        "%YAML 1.2",
        "'single",
        "\"double",
        "\\",
        "\\n literally",
        "---",
        "...",
        "- dash",
        "? question",
        "|",
        ">",
        "@at",
        "`tick",
        "tab\there",
        "\ttab first",
        "trailing space ",
        "  leading space",
        "cr\rlf\r\n",
        "yes",
        "No",
        "on",
        "true",
        "null",
        "~",
        "0123",
        "0x1F",
        "0o17",
        "1e3",
        "-.inf",
        ".NaN",
        "1_000",
        "12:30:00",
        "2001-12-14",
        "<<",
        "=",
        "ünïcødé ☃ 😀",
        "\u{85}nel \u{2028}ls \u{2029}ps \u{feff}bom \u{fffe}\u{ffff}",
        "\x01\x07\x08\x0b\x0c\x1b\x7f",
        "\u{80}\u{9f}\u{a0}",
        "%40percent%3Aencoded%2F",
        "p@ss:w/rd?x=1#frag",
    ];

    fn parse_one(value: &str) -> Yaml {
        let text = format!("init_config:\ninstances:\n  - password: {}\n    port: 5432\n", quote(value).unwrap());
        let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{value:?} gave invalid YAML: {e}\n{text}"));
        assert_eq!(docs.len(), 1, "{value:?}: {text}");
        let instances = docs[0]["instances"].as_vec().unwrap_or_else(|| panic!("{value:?}: {text}"));
        assert_eq!(instances.len(), 1, "{value:?} added an instance: {text}");
        let keys: Vec<_> = instances[0].as_hash().unwrap().keys().filter_map(Yaml::as_str).collect();
        assert_eq!(keys, ["password", "port"], "{value:?} added keys: {text}");
        instances[0]["password"].clone()
    }

    #[test]
    fn quoted_values_read_back_exactly() {
        for value in HOSTILE {
            assert_eq!(parse_one(value).as_str(), Some(*value), "{value:?}");
            let quoted = quote(value).unwrap();
            assert!(quoted.bytes().all(|b| (b' '..=b'~').contains(&b)), "{value:?} -> {quoted:?} is not printable ASCII");
        }
        // Every character from U+0001 to U+FFFF and a sample above, one value each.
        let all: String = (1..=0x10FFFFu32).filter(|c| *c < 0x10000 || c % 97 == 0).filter_map(char::from_u32).collect();
        assert_eq!(parse_one(&all).as_str(), Some(all.as_str()));
    }

    #[test]
    fn nul_is_refused() {
        assert_eq!(quote("a\0b"), Err(Unrepresentable));
        assert_eq!(number_or_quote("\0"), Err(Unrepresentable));
    }

    #[test]
    fn numbers_stay_integers_only_in_canonical_form() {
        assert_eq!(number_or_quote("5432").unwrap(), "5432");
        assert_eq!(number_or_quote("0").unwrap(), "0");
        for odd in ["0123", "", "1e3", "0x1F", "5432 ", "+1", "-1", "1234567890", "6379\n- x"] {
            let text = format!("port: {}\n", number_or_quote(odd).unwrap());
            let docs = YamlLoader::load_from_str(&text).unwrap();
            assert_eq!(docs[0]["port"].as_str(), Some(odd), "{odd:?}: {text}");
        }
    }

    #[test]
    fn edits_like_the_classic_script() {
        let example = "## comment\n# api_key:\n# confd_path: /etc/x\n# additional_checksd: /y\n# cloud_provider_metadata:\n#   - aws\n# apm_config:\n#   enabled: true\n# process_config:\n# logs_config:\n";
        let s = YamlSettings { conf_dir: "/c", run_dir: "/r", apm_log: "/l/apm.log", process_log: Some("/l/p.log"), python3_on_agent6: true };
        let out = edit(example, &s).unwrap();
        assert!(out.contains("\nconfd_path: \"/c/conf.d\"\n"), "{out}");
        assert!(out.contains("\nadditional_checksd: \"/c/checks.d\"\nrun_path: \"/r\"\n"));
        assert!(out.contains("\ncloud_provider_metadata: []\n"));
        assert!(out.contains("\napm_config:\n  log_file: \"/l/apm.log\"\n"));
        assert!(out.contains("\nprocess_config:\n  enabled: true\n  log_file: \"/l/p.log\"\n"));
        assert!(out.contains("\nlogs_config:\n  run_path: \"/r\"\n"));
        assert!(out.ends_with("python_version: 3\n"));
        let without = edit(example, &YamlSettings { process_log: None, python3_on_agent6: false, ..s }).unwrap();
        assert!(without.contains("\n# process_config:\n") && !without.contains("python_version"));
    }

    #[test]
    fn hostile_home_paths_read_back_exactly() {
        let example = "# confd_path: /etc/x\n# additional_checksd: /y\n# apm_config:\n# process_config:\n# logs_config:\n";
        for home in ["/app: x\n- y", "/a #b", "/'q\"", "/ü\u{2028}"] {
            let (conf, run, apm, proc_log) = (format!("{home}/etc"), format!("{home}/run"), format!("{home}/apm.log"), format!("{home}/p.log"));
            let s = YamlSettings { conf_dir: &conf, run_dir: &run, apm_log: &apm, process_log: Some(&proc_log), python3_on_agent6: false };
            let docs = YamlLoader::load_from_str(&edit(example, &s).unwrap()).unwrap();
            let d = &docs[0];
            assert_eq!(d["confd_path"].as_str(), Some(format!("{conf}/conf.d").as_str()));
            assert_eq!(d["additional_checksd"].as_str(), Some(format!("{conf}/checks.d").as_str()));
            assert_eq!(d["run_path"].as_str(), Some(run.as_str()));
            assert_eq!(d["apm_config"]["log_file"].as_str(), Some(apm.as_str()));
            assert_eq!(d["process_config"]["log_file"].as_str(), Some(proc_log.as_str()));
            assert_eq!(d["logs_config"]["run_path"].as_str(), Some(run.as_str()));
        }
        assert_eq!(edit(example, &YamlSettings { conf_dir: "/a\0", run_dir: "/r", apm_log: "/l", process_log: None, python3_on_agent6: false }), Err(Unrepresentable));
        let info = YamlLoader::load_from_str(&install_info("ddslug-0.1.0").unwrap()).unwrap();
        assert_eq!(info[0]["install_method"]["installer_version"].as_str(), Some("heroku-ddslug-0.1.0"));
    }
}
