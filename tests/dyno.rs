//! Dyno start: the real `.profile.d/datadog.sh`, sourced by bash over a slug built by
//! bin/compile, with fake agent executables that record how they were started.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Served, bin_compile, text};

/// A fake agent program: records its name, arguments and the environment it got.
const FAKE_AGENT: &str = "#!/bin/sh\n{\n  echo \"PROGRAM=$0\"\n  echo \"ARGS=$*\"\n  echo \"LD_LIBRARY_PATH=$LD_LIBRARY_PATH\"\n  echo \"PYTHONPATH=$PYTHONPATH\"\n  echo \"DD_TAGS=$DD_TAGS\"\n  echo \"DD_HOSTNAME=$DD_HOSTNAME\"\n} > \"$RECORD_DIR/$(basename \"$0\").$$\"\n";

struct Slug {
    dir: PathBuf,
}

/// Builds a slug for `settings` and swaps the agent binaries for recorders.
fn slug(served: &Served, name: &str, settings: &[(&str, &str)]) -> Slug {
    let build = served.build_dir(name);
    let out = bin_compile(&build, &served.dir.path().join("cache"), &served.env_dir(name, settings));
    assert!(out.status.success(), "{}", text(&out));
    let dd = build.join(".apt/opt/datadog-agent");
    for program in ["bin/agent/agent", "embedded/bin/trace-agent", "embedded/bin/process-agent"] {
        let path = dd.join(program);
        if path.exists() {
            // Replace, never write in place: slug files are hard links into the layer cache.
            fs::remove_file(&path).unwrap();
            fs::write(&path, FAKE_AGENT).unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    Slug { dir: build }
}

struct Started {
    /// Exported environment of the shell after sourcing (what the app sees).
    env: BTreeMap<String, String>,
    /// One map per launched program.
    launches: Vec<BTreeMap<String, String>>,
    output: String,
}

fn source(slug: &Slug, vars: &[(&str, &str)], expect_launches: usize) -> Started {
    let record = slug.dir.join(format!("record-{}", rand_suffix()));
    fs::create_dir_all(&record).unwrap();
    let env_file = record.join("app.env");
    let script = format!("source .profile.d/datadog.sh && env > '{}'", env_file.display());
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(&script).current_dir(&slug.dir).env_clear();
    cmd.env("HOME", &slug.dir).env("PATH", std::env::var("PATH").unwrap()).env("RECORD_DIR", &record);
    cmd.env("DYNO", "web.1").env("DDSLUG_HOSTNAME_OVERRIDE", "1a2b_host");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let files: Vec<PathBuf> = fs::read_dir(&record)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap() != "app.env")
            .collect();
        let complete = files.iter().all(|f| fs::read_to_string(f).unwrap().contains("DD_HOSTNAME="));
        if (files.len() >= expect_launches && complete) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Give a wrongly launched extra program the chance to show up.
    std::thread::sleep(Duration::from_millis(expect_launches.max(1) as u64 * 50));
    let records: Vec<PathBuf> =
        fs::read_dir(&record).unwrap().map(|e| e.unwrap().path()).filter(|p| p.file_name().unwrap() != "app.env").collect();
    let parse = |text: &str| -> BTreeMap<String, String> {
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let mut launches: Vec<BTreeMap<String, String>> = records.iter().map(|f| parse(&fs::read_to_string(f).unwrap())).collect();
    launches.sort_by(|a, b| a["PROGRAM"].cmp(&b["PROGRAM"]));
    Started { env: parse(&fs::read_to_string(&env_file).unwrap()), launches, output: text(&out) }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst).to_string()
}

fn programs(s: &Started) -> Vec<(String, String)> {
    s.launches
        .iter()
        .map(|l| {
            let program = l["PROGRAM"].rsplit("/datadog-agent/").next().unwrap().to_string();
            (program, l["ARGS"].clone())
        })
        .collect()
}

fn conf(slug: &Slug) -> String {
    slug.dir.join(".apt/etc/datadog-agent/datadog.yaml").to_string_lossy().into_owned()
}

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
    assert!(yaml.contains(&format!("confd_path: {}/conf.d\n", conf_dir.display())), "{yaml}");
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
    let pg = fs::read_to_string(conf_d.join("postgres.d/conf.yaml")).unwrap();
    assert!(pg.contains("  - host: db.example\n    username: alice\n    password: pg-s3cret\n    port: 5432\n    dbname: main\n    ssl: require\n    disable_generic_tags: false\n    dbm: true\n"), "{pg}");
    assert!(pg.contains("  - host: replica.example\n"), "{pg}");
    let redis = fs::read_to_string(conf_d.join("redisdb.d/conf.yaml")).unwrap();
    assert!(redis.contains("  - host: cache.example\n    password: redis-s3cret\n    port: 6380\n    ssl: true\n    ssl_cert_reqs: 0\n    username: default\n    db: 3\n"), "{redis}");
    assert!(started.output.contains("ENABLE_HEROKU_REDIS is deprecated"), "{}", started.output);
    assert!(started.output.contains("BROKEN_URL is not a postgres://"), "{}", started.output);
    assert!(!started.output.contains("s3cret"), "a password was printed: {}", started.output);
    assert!(conf_d.join("cpu.d/conf.yaml.default_disabled").exists());
    assert!(!conf_d.join("cpu.d/conf.yaml.default").exists());
}
