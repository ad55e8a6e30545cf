//! datadog.yaml from the package's datadog.yaml.example, edited line by line the way the
//! classic start script edits it, so that the agent sees the same configuration.

/// What to write into datadog.yaml.
pub struct YamlSettings<'a> {
    pub conf_dir: &'a str,
    pub run_dir: &'a str,
    pub apm_log: &'a str,
    pub process_log: Option<&'a str>,
    /// `python_version: 3` for agent 6 running Python 3.
    pub python3_on_agent6: bool,
}

/// Applies the edits to the example text.
pub fn edit(example: &str, s: &YamlSettings) -> String {
    let mut out = String::with_capacity(example.len() + 512);
    for line in example.lines() {
        let trimmed = line.trim_start_matches(['#', ' ']);
        if trimmed.starts_with("confd_path:") {
            out += &format!("confd_path: {}/conf.d\n", s.conf_dir);
        } else if trimmed.starts_with("additional_checksd:") {
            out += &format!("additional_checksd: {}/checks.d\nrun_path: {}\n", s.conf_dir, s.run_dir);
        } else if trimmed.starts_with("cloud_provider_metadata:") {
            out += "cloud_provider_metadata: []\n";
        } else if line == "# apm_config:" || line == "apm_config:" {
            out += &format!("apm_config:\n  log_file: {}\n", s.apm_log);
        } else if (line == "# process_config:" || line == "process_config:") && s.process_log.is_some() {
            out += &format!("process_config:\n  enabled: true\n  log_file: {}\n", s.process_log.unwrap_or_default());
        } else if line == "# logs_config:" || line == "logs_config:" {
            out += &format!("logs_config:\n  run_path: {}\n", s.run_dir);
        } else {
            out += line;
            out.push('\n');
        }
    }
    if s.python3_on_agent6 {
        out += "python_version: 3\n";
    }
    out
}

/// The install_info file the agent reports.
pub fn install_info(buildpack_version: &str) -> String {
    format!("install_method:\n  tool: heroku\n  tool_version: heroku\n  installer_version: heroku-{buildpack_version}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_like_the_classic_script() {
        let example = "## comment\n# api_key:\n# confd_path: /etc/x\n# additional_checksd: /y\n# cloud_provider_metadata:\n#   - aws\n# apm_config:\n#   enabled: true\n# process_config:\n# logs_config:\n";
        let s = YamlSettings { conf_dir: "/c", run_dir: "/r", apm_log: "/l/apm.log", process_log: Some("/l/p.log"), python3_on_agent6: true };
        let out = edit(example, &s);
        assert!(out.contains("\nconfd_path: /c/conf.d\n"));
        assert!(out.contains("\nadditional_checksd: /c/checks.d\nrun_path: /r\n"));
        assert!(out.contains("\ncloud_provider_metadata: []\n"));
        assert!(out.contains("\napm_config:\n  log_file: /l/apm.log\n"));
        assert!(out.contains("\nprocess_config:\n  enabled: true\n  log_file: /l/p.log\n"));
        assert!(out.contains("\nlogs_config:\n  run_path: /r\n"));
        assert!(out.ends_with("python_version: 3\n"));
        let without = edit(example, &YamlSettings { process_log: None, python3_on_agent6: false, ..s });
        assert!(without.contains("\n# process_config:\n") && !without.contains("python_version"));
    }
}
