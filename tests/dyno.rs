//! Dyno start: the real `.profile.d/datadog.sh`, sourced by bash over a slug built by
//! bin/compile, with fake agent executables that record how they were started. The classic
//! buildpack's behaviour; hostile input is in dyno_hostile.rs.

mod common;
mod dyno_support;

use std::fs;
use std::process::Command;

use common::{Served, text};
use dyno_support::{Run, conf, fields, instances, owned, programs, run, seen, slug, source};

#[test]
fn agent7_defaults_tags_hostname_and_isolated_library_paths() {
    let served = Served::start();
    let s = slug(&served, "d7", &[]);
    let started = source(&s, &[("DD_API_KEY", "k"), ("HEROKU_APP_NAME", "my_app"), ("DD_TAGS", "env:prod, team:a,x:y")], 2);
    let c = conf(&s);
    assert_eq!(
        programs(&started),
        vec![("bin/agent/agent".into(), format!("run -c {c}")), ("embedded/bin/trace-agent".into(), format!("--config {c}"))]
    );
    let tags = &started.env["DD_TAGS"];
    assert!(tags.starts_with("dyno:web.1 dynotype:web buildpackversion:ddslug-"), "{tags}");
    assert!(tags.ends_with(" appname:my_app env:prod team:a x:y"), "{tags}");
    assert_eq!(started.env["DD_HOSTNAME"], "1a2b-host");
    assert_eq!(started.env["DD_HOST_ALIASES"], "1a2b_host");
    assert_eq!(started.env["DYNOTYPE"], "web");
    assert_eq!(started.env["DD_HEROKU_DYNO"], "true");
    // Library paths for the agents only, never for the app.
    assert!(!started.env.contains_key("LD_LIBRARY_PATH") && !started.env.contains_key("PYTHONPATH"));
    for launch in &started.launches {
        assert!(launch["LD_LIBRARY_PATH"].contains(".apt/opt/datadog-agent/embedded/lib"));
        assert!(launch["PYTHONPATH"].contains("python3.12/site-packages"));
        assert_eq!(&launch["DD_TAGS"], tags);
    }
    let yaml = fs::read_to_string(&c).unwrap();
    let conf_dir = s.dir.join(".apt/etc/datadog-agent");
    assert!(yaml.contains(&format!("confd_path: \"{}/conf.d\"\n", conf_dir.display())), "{yaml}");
    assert!(yaml.contains("cloud_provider_metadata: []\n"));
    assert!(yaml.contains("apm_config:\n  log_file: "));
    assert!(!yaml.contains("python_version"), "agent 7 is Python 3 only");
    assert!(fs::read_to_string(conf_dir.join("install_info")).unwrap().contains("tool: heroku"));
    // agent-wrapper works from a shell that sourced the profile (heroku run bash).
    fs::create_dir_all(s.dir.join("record-wrapper")).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg("source .profile.d/datadog.sh >/dev/null 2>&1; agent-wrapper status")
        .current_dir(&s.dir)
        .env("HOME", &s.dir)
        .env("RECORD_DIR", s.dir.join("record-wrapper"))
        .env_remove("DD_API_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rec = fs::read_dir(s.dir.join("record-wrapper")).unwrap().next().unwrap().unwrap().path();
    let rec = fs::read_to_string(rec).unwrap();
    assert!(rec.contains(&format!("ARGS=-c {c} status")), "{rec}");
}

#[test]
fn process_agent_apm_off_and_dyno_host() {
    let served = Served::start();
    // 7.67: the combined binary runs as process-agent through a symlink.
    let s = slug(&served, "p767", &[("DD_AGENT_VERSION", "7.67.0-1"), ("DD_PROCESS_AGENT", "true")]);
    let vars = [("DD_API_KEY", "k"), ("DD_PROCESS_AGENT", "true"), ("DD_APM_ENABLED", "FALSE"), ("DD_DYNO_HOST", "true"), ("HEROKU_APP_NAME", "my_app")];
    let started = source(&s, &vars, 2);
    let c = conf(&s);
    assert_eq!(
        programs(&started),
        vec![("bin/agent/agent".into(), format!("run -c {c}")), ("bin/agent/process-agent".into(), format!("--cfgpath {c}"))]
    );
    assert_eq!(started.env["DD_HOSTNAME"], "my-app.web.1");
    let yaml = fs::read_to_string(&c).unwrap();
    assert!(yaml.contains("process_config:\n  enabled: true\n  log_file: "), "{yaml}");
    // Agent 6 before 6.52: the separate process-agent binary; Python 3 needs python_version.
    let s = slug(&served, "p651", &[("DD_AGENT_VERSION", "6.51.0-1"), ("DD_PROCESS_AGENT", "true"), ("DD_PYTHON_VERSION", "3")]);
    let started = source(&s, &[("DD_API_KEY", "k"), ("DD_PROCESS_AGENT", "true")], 3);
    let c = conf(&s);
    assert_eq!(
        programs(&started),
        vec![
            ("bin/agent/agent".into(), format!("run -c {c}")),
            ("embedded/bin/process-agent".into(), format!("--cfgpath {c}")),
            ("embedded/bin/trace-agent".into(), format!("--config {c}")),
        ]
    );
    assert!(fs::read_to_string(&c).unwrap().ends_with("python_version: 3\n"));
}

#[test]
fn missing_api_key_or_prerun_disable_starts_nothing_but_the_app_goes_on() {
    let served = Served::start();
    let s = slug(&served, "nokey", &[]);
    let started = source(&s, &[], 0);
    assert!(started.launches.is_empty());
    assert!(started.output.contains("DD_API_KEY is not set"), "{}", started.output);
    // prerun.sh sees DYNOTYPE, can disable the agent for one-off dynos and change tags.
    fs::create_dir_all(s.dir.join("datadog")).unwrap();
    fs::write(
        s.dir.join("datadog/prerun.sh"),
        "if [ \"$DYNOTYPE\" = run ]; then export DISABLE_DATADOG_AGENT=true; fi\nexport DD_TAGS=\"$DD_TAGS from:prerun\"\n",
    )
    .unwrap();
    let mut vars = vec![("DD_API_KEY", "k"), ("DYNO", "run.1234")];
    let started = source(&s, &vars, 0);
    assert!(started.launches.is_empty(), "{:?}", started.launches);
    assert!(started.output.contains("DISABLE_DATADOG_AGENT"), "{}", started.output);
    vars[1] = ("DYNO", "worker.2");
    let started = source(&s, &vars, 2);
    assert_eq!(started.launches.len(), 2);
    assert!(started.env["DD_TAGS"].ends_with(" from:prerun"), "{}", started.env["DD_TAGS"]);
    assert!(started.env["DD_TAGS"].contains("dynotype:worker"));
}

#[test]
fn integrations_configs_and_database_urls_without_leaking_passwords() {
    let served = Served::start();
    let s = slug(&served, "int", &[]);
    let app = s.dir.join("datadog");
    fs::create_dir_all(app.join("conf.d/nginx.d")).unwrap();
    fs::write(app.join("conf.d/nginx.d/conf.yaml"), "instances: [{}]\n").unwrap();
    fs::write(app.join("conf.d/legacy.yaml"), "instances: [{legacy: true}]\n").unwrap();
    fs::create_dir_all(app.join("checks.d")).unwrap();
    fs::write(app.join("checks.d/mycheck.py"), "# check\n").unwrap();
    fs::write(app.join("checks.d/mycheck.yaml"), "instances: [{}]\n").unwrap();
    let vars = [
        ("DD_API_KEY", "k"),
        ("DD_ENABLE_HEROKU_POSTGRES", "true"),
        ("DD_POSTGRES_URL_VAR", "DATABASE_URL,FOLLOWER_URL,BROKEN_URL"),
        ("DATABASE_URL", "postgres://alice:pg-s3cret@db.example:5432/main"),
        ("FOLLOWER_URL", "postgres://bob:pg-s3cret2@replica.example:5433/main"),
        ("BROKEN_URL", "not-a-url-with-pw-s3cret"),
        ("DD_ENABLE_DBM", "true"),
        ("ENABLE_HEROKU_REDIS", "true"),
        ("REDIS_URL", "rediss://default:redis-s3cret@cache.example:6380/3"),
        ("DD_DISABLE_HOST_METRICS", "true"),
        ("DD_LOG_LEVEL", "debug"),
    ];
    let started = source(&s, &vars, 2);
    let conf_d = s.dir.join(".apt/etc/datadog-agent/conf.d");
    assert!(conf_d.join("nginx.d/conf.yaml").exists());
    assert_eq!(fs::read_to_string(conf_d.join("legacy.d/conf.yaml")).unwrap(), "instances: [{legacy: true}]\n");
    assert!(conf_d.join("mycheck.yaml").exists());
    assert!(s.dir.join(".apt/etc/datadog-agent/checks.d/mycheck.py").exists());
    let pg = instances(&conf_d.join("postgres.d/conf.yaml"));
    assert_eq!(pg.len(), 2);
    assert_eq!(
        fields(&pg[0]),
        owned(&[("host", "db.example"), ("username", "alice"), ("password", "pg-s3cret"), ("port", "5432"), ("dbname", "main"), ("ssl", "require"), ("disable_generic_tags", "false"), ("dbm", "true")])
    );
    assert_eq!(pg[1]["host"].as_str(), Some("replica.example"));
    let redis = instances(&conf_d.join("redisdb.d/conf.yaml"));
    assert_eq!(
        fields(&redis[0]),
        owned(&[("host", "cache.example"), ("password", "redis-s3cret"), ("port", "6380"), ("ssl", "true"), ("ssl_cert_reqs", "0"), ("username", "default"), ("db", "3")])
    );
    // Ports and database numbers stay integers, as the classic wrote them.
    assert_eq!((pg[0]["port"].as_i64(), redis[0]["db"].as_i64()), (Some(5432), Some(3)));
    assert!(started.output.contains("ENABLE_HEROKU_REDIS is deprecated"), "{}", started.output);
    assert!(started.output.contains("BROKEN_URL is not a postgres://"), "{}", started.output);
    assert!(!started.output.contains("s3cret"), "a password was printed: {}", started.output);
    assert!(conf_d.join("cpu.d/conf.yaml.default_disabled").exists());
    assert!(!conf_d.join("cpu.d/conf.yaml.default").exists());
}

#[test]
fn prerun_assignments_exported_or_not_are_what_the_agent_start_sees() {
    let served = Served::start();
    // Agent 6 before 6.52: the process agent is its own program; flags depend on the major.
    let s = slug(&served, "prerun", &[("DD_AGENT_VERSION", "6.51.0-1"), ("DD_PROCESS_AGENT", "true")]);
    let c = conf(&s);
    let prerun = |text: &str| fs::write(s.dir.join("datadog/prerun.sh"), text).unwrap();
    fs::create_dir_all(s.dir.join("datadog")).unwrap();

    // The documented example: an unexported assignment disables the agent.
    prerun("DISABLE_DATADOG_AGENT=\"true\"\n");
    let started = source(&s, &[("DD_API_KEY", "k")], 0);
    assert!(started.launches.is_empty(), "{:?}", started.launches);
    assert!(started.output.contains("disabled by DISABLE_DATADOG_AGENT"), "{}", started.output);
    assert!(!started.env.contains_key("DISABLE_DATADOG_AGENT"), "not exported into the app's environment");

    // Every setting read after prerun.sh, assigned without export.
    prerun(
        "DD_TAGS=\"team:prerun, env:staging\"\nDD_VERSION=\"1.2.3\"\nDD_HOSTNAME=\"prerun-host\"\nDD_APM_ENABLED=\"false\"\n\
         DD_PROCESS_AGENT=\"true\"\nDD_LOG_LEVEL=\"debug\"\nDD_API_KEY=\"from-prerun\"\nDD_SITE=\"datadoghq.eu\"\n",
    );
    let started = source(&s, &[], 1);
    assert_eq!(programs(&started), vec![("bin/agent/agent".into(), format!("run -c {c}")), ("embedded/bin/process-agent".into(), format!("--cfgpath {c}"))]);
    let tags = seen(&started, "DD_TAGS");
    assert!(tags.iter().all(|t| t.as_deref().is_some_and(|t| t.starts_with("dyno:web.1 ") && t.ends_with(" team:prerun env:staging"))), "{tags:?}");
    assert_eq!(started.env["DD_TAGS"], tags[0].clone().unwrap());
    for (name, value) in [("DD_VERSION", "1.2.3"), ("DD_HOSTNAME", "prerun-host"), ("DD_API_KEY", "from-prerun"), ("DD_SITE", "datadoghq.eu")] {
        assert_eq!(seen(&started, name), vec![Some(value.to_string()); 2], "{name}");
    }
    assert!(started.output.contains("[DEBUG] normalized tags"), "DD_LOG_LEVEL from prerun.sh: {}", started.output);
    for unexported in ["DD_SITE", "DD_API_KEY", "DD_APM_ENABLED", "DD_LOG_LEVEL"] {
        assert!(!started.env.contains_key(unexported), "{unexported} was exported into the app's environment");
    }

    // DD_AGENT_MAJOR_VERSION: set by the start script before prerun.sh, which may change it;
    // the classic picks flags by it (here agent 7's, which 6.51 predates).
    prerun("DD_AGENT_MAJOR_VERSION=7\n");
    let started = source(&s, &[("DD_API_KEY", "k"), ("DD_PROCESS_AGENT", "true")], 3);
    assert_eq!(
        programs(&started),
        vec![
            ("bin/agent/agent".into(), format!("run -c {c}")),
            ("embedded/bin/process-agent".into(), format!("--config {c}")),
            ("embedded/bin/trace-agent".into(), format!("-config {c}")),
        ]
    );

    // `unset` in prerun.sh is seen as unset.
    prerun("unset DD_TAGS DD_VERSION DD_HOSTNAME DD_APM_ENABLED DISABLE_DATADOG_AGENT\n");
    let vars = [("DD_API_KEY", "k"), ("DD_TAGS", "env:x"), ("DD_VERSION", "9"), ("DD_APM_ENABLED", "false"), ("DISABLE_DATADOG_AGENT", "true")];
    let started = source(&s, &vars, 2);
    assert_eq!(started.launches.len(), 2, "{}", started.output);
    assert!(seen(&started, "DD_TAGS").iter().all(|t| !t.as_deref().unwrap_or_default().contains("env:x")));
    assert_eq!(seen(&started, "DD_VERSION"), vec![Some(String::new()); 2], "exported empty, as the classic did");
    assert_eq!(seen(&started, "DD_HOSTNAME"), vec![None; 2]);
    prerun("unset DD_API_KEY\n");
    let started = source(&s, &[("DD_API_KEY", "k")], 0);
    assert!(started.launches.is_empty() && started.output.contains("DD_API_KEY is not set"), "{}", started.output);

    // Exported ones, as before.
    prerun("export DD_TAGS=\"from:export\"\nexport DD_APM_ENABLED=false\n");
    let started = source(&s, &[("DD_API_KEY", "k")], 1);
    assert_eq!(programs(&started), vec![("bin/agent/agent".into(), format!("run -c {c}"))]);
    assert!(started.env["DD_TAGS"].ends_with(" from:export") && started.env["DD_APM_ENABLED"] == "false");

    // Settings read before prerun.sh, as the classic reads them, are shell variables too: an
    // unexported URL named by an unexported DD_POSTGRES_URL_VAR.
    fs::remove_file(s.dir.join("datadog/prerun.sh")).unwrap();
    let how = Run {
        before: "DD_ENABLE_HEROKU_POSTGRES=true; DD_POSTGRES_URL_VAR='SHELL_ONLY_URL'; SHELL_ONLY_URL='postgres://u:p@h:5432/d'",
        ..Run::vars(&[("DD_API_KEY", "k"), ("DD_APM_ENABLED", "false"), ("DD_PROCESS_AGENT", "false")])
    };
    let started = run(&s, &how, 1);
    assert_eq!(started.launches.len(), 1, "{}", started.output);
    let pg = instances(&s.dir.join(".apt/etc/datadog-agent/conf.d/postgres.d/conf.yaml"));
    assert_eq!(pg.len(), 1, "{}", started.output);
    assert_eq!(pg[0]["host"].as_str(), Some("h"));
    assert!(!started.env.contains_key("SHELL_ONLY_URL") && !started.env.contains_key("DD_POSTGRES_URL_VAR"));
}


/// `ddslug dyno run -- COMMAND` (a container's entry point): the slug's binary finds its slug,
/// sources datadog.sh and the app's prerun.sh in bash as a dyno does, starts the agents and
/// replaces itself with the app's command, which gets the exports and its exit status back.
#[test]
fn dyno_run_starts_the_agents_then_execs_the_app() {
    let served = Served::start();
    let s = slug(&served, "run", &[]);
    fs::create_dir_all(s.dir.join("datadog")).unwrap();
    fs::write(s.dir.join("datadog/prerun.sh"), "export DD_TAGS=\"$DD_TAGS from:prerun\"\n").unwrap();
    let record = s.dir.join("record-run");
    fs::create_dir_all(&record).unwrap();
    let app = "env > \"$RECORD_DIR/app.env\"; echo \"app args: $*\"; exit 7";
    let out = Command::new(s.dir.join(".ddslug/bin/ddslug"))
        .args(["dyno", "run", "--", "sh", "-c", app, "sh", "--port", "5000"])
        .env_clear()
        // HOME is not the slug (a container's is /root): the binary's place says where it is.
        .env("HOME", "/nonexistent")
        .env("PATH", std::env::var("PATH").unwrap())
        .env("RECORD_DIR", &record)
        .env("DYNO", "web.1")
        .env("DDSLUG_HOSTNAME_OVERRIDE", "1a2b_host")
        .env("DD_API_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "the app's exit status: {}", text(&out));
    assert!(text(&out).contains("app args: --port 5000"), "{}", text(&out));
    let launched = || fs::read_dir(&record).unwrap().filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.')).count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // app.env and one record per agent.
    while launched() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let read = |name: &str| -> std::collections::BTreeMap<String, String> {
        let text = fs::read_to_string(record.join(name)).unwrap();
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let env = read("app.env");
    assert_eq!(env["HOME"], s.dir.display().to_string());
    assert!(env["DD_TAGS"].starts_with("dyno:web.1 dynotype:web ") && env["DD_TAGS"].ends_with(" from:prerun"), "{}", env["DD_TAGS"]);
    assert!(env["PATH"].starts_with(&format!("{}/.apt/usr/bin:", s.dir.display())), "{}", env["PATH"]);
    let mut programs: Vec<String> = fs::read_dir(&record)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "app.env" && !n.starts_with('.'))
        .map(|n| read(&n)["PROGRAM"].rsplit('/').next().unwrap().to_string())
        .collect();
    programs.sort();
    assert_eq!(programs, ["agent", "trace-agent"]);
    // No bash to source the start script with, or no slug where this ddslug is: said in one
    // line, and the app runs all the same (without the agent), as datadog.sh promises.
    let out = Command::new(s.dir.join(".ddslug/bin/ddslug")).args(["dyno", "run", "--", "/bin/sh", "-c", "exit 5"]).env_clear().env("PATH", "/nonexistent").output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("the Datadog Agent will not start: there is no bash"), "{}", text(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_ddslug")).args(["dyno", "run", "--", "sh", "-c", "exit 6"]).env("HOME", "/nonexistent").output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(text(&out).contains("is not <slug>/.ddslug/bin/ddslug"), "{}", text(&out));
}
