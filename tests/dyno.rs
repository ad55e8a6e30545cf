//! Dyno start: the real `.profile.d/datadog.sh`, sourced by bash over a slug built by
//! bin/compile, with fake agent executables that record how they were started.

mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Served, bin_compile, text};
use yaml_rust2::{Yaml, YamlLoader};

/// A fake agent program: records its name, arguments and its whole environment, then renames
/// the record into place so that a reader never sees half of it.
const FAKE_AGENT: &str = "#!/bin/sh\n{\n  echo \"PROGRAM=$0\"\n  echo \"ARGS=$*\"\n  env\n} > \"$RECORD_DIR/.tmp.$$\"\nmv \"$RECORD_DIR/.tmp.$$\" \"$RECORD_DIR/$(basename \"$0\").$$\"\n";

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
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    Slug { dir: build }
}

struct Started {
    /// Exported environment of the shell after sourcing (what the app sees).
    env: BTreeMap<String, String>,
    /// One map per launched program: PROGRAM, ARGS and its environment.
    launches: Vec<BTreeMap<String, String>>,
    output: String,
}

/// How to source the profile script.
#[derive(Default)]
struct Run<'a> {
    /// Environment variables (values are bytes: some tests need ones that are not UTF-8).
    vars: Vec<(&'a str, OsString)>,
    /// Shell code run before sourcing (unexported assignments, a umask).
    before: &'a str,
    /// Run as this uid and gid (setpriv), when the test runs as root.
    user: Option<u32>,
}

impl<'a> Run<'a> {
    fn vars(pairs: &[(&'a str, &str)]) -> Run<'a> {
        Run { vars: pairs.iter().map(|(k, v)| (*k, OsString::from(v))).collect(), ..Run::default() }
    }
}

fn source(slug: &Slug, vars: &[(&str, &str)], expect_launches: usize) -> Started {
    run(slug, &Run::vars(vars), expect_launches)
}

fn run(slug: &Slug, how: &Run, expect_launches: usize) -> Started {
    let record = slug.dir.join(format!("record-{}", rand_suffix()));
    fs::create_dir_all(&record).unwrap();
    let env_file = record.join("app.env");
    let script = format!("{}\nsource .profile.d/datadog.sh && env > \"$RECORD_DIR/app.env\"", how.before);
    let mut cmd = match how.user {
        Some(id) => {
            std::os::unix::fs::chown(&record, Some(id), Some(id)).unwrap();
            let mut cmd = Command::new("setpriv");
            cmd.args([format!("--reuid={id}"), format!("--regid={id}"), "--clear-groups".into(), "bash".into()]);
            cmd
        }
        None => Command::new("bash"),
    };
    cmd.arg("-c").arg(&script).current_dir(&slug.dir).env_clear();
    cmd.env("HOME", &slug.dir).env("PATH", std::env::var("PATH").unwrap()).env("RECORD_DIR", &record);
    cmd.env("DYNO", "web.1").env("DDSLUG_HOSTNAME_OVERRIDE", "1a2b_host");
    for (k, v) in &how.vars {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let records = |record: &Path| -> Vec<PathBuf> {
        fs::read_dir(record)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap() != "app.env" && !p.file_name().unwrap().as_bytes().starts_with(b"."))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while records(&record).len() < expect_launches && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Give a wrongly launched extra program the chance to show up.
    std::thread::sleep(Duration::from_millis(expect_launches.max(1) as u64 * 50));
    let parse = |text: &str| -> BTreeMap<String, String> {
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let mut launches: Vec<BTreeMap<String, String>> = records(&record).iter().map(|f| parse(&String::from_utf8_lossy(&fs::read(f).unwrap()))).collect();
    launches.sort_by(|a, b| a["PROGRAM"].cmp(&b["PROGRAM"]));
    Started { env: parse(&String::from_utf8_lossy(&fs::read(&env_file).unwrap())), launches, output: text(&out) }
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

/// The `instances` of an integration's conf.yaml, read by a YAML parser.
fn instances(path: &Path) -> Vec<Yaml> {
    let text = fs::read_to_string(path).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()));
    assert_eq!(docs.len(), 1, "{text}");
    docs[0]["instances"].as_vec().unwrap_or_else(|| panic!("{}: no instances\n{text}", path.display())).clone()
}

/// An instance's keys in order, each with its scalar value as text.
fn fields(instance: &Yaml) -> Vec<(String, String)> {
    let scalar = |v: &Yaml| match v {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("{other:?}"),
    };
    instance.as_hash().unwrap().iter().map(|(k, v)| (k.as_str().unwrap().to_string(), scalar(v))).collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).mode() & 0o7777
}

/// Passwords that break YAML written by pasting, each usable in a URL's password part (not
/// empty, any bytes but NUL). Those with `s3cret` are also checked never to be printed.
const HOSTILE_PASSWORDS: &[&str] = &[
    "a\nb: c-s3cret",
    "x-s3cret\n  - host: evil\n    password: y",
    "p: w-s3cret",
    "#s3cret-comment",
    "{a: 1, s3cret: 2}",
    "[s3cret]",
    "*alias-s3cret",
    "&anchor s3cret",
    "!tag s3cret",
    "!!binary czNjcmV0",
    "%s3cret%40encoded%3A",
    "'single-s3cret",
    "\"double-s3cret",
    "---",
    "...",
    "- s3cret",
    "? s3cret",
    "|",
    ">",
    "@s3cret@",
    "tab\ts3cret",
    " s3cret ",
    "back\\slash-s3cret",
    "cr\rs3cret",
    "yes",
    "off",
    "null",
    "~",
    "0123",
    "1e3",
    "0x1F",
    ".inf",
    "<<",
    "=",
    "ünïcødé-s3cret ☃ 😀",
    "\u{85}nel\u{2028}ls\u{2029}ps\u{feff}bom-s3cret",
    "\x01\x1b\x7f-s3cret",
    "p@ss:w/rd?x=1#frag-s3cret",
];

#[test]
fn hostile_database_urls_read_back_exactly_and_secret_files_are_private() {
    let served = Served::start();
    // A HOME that needs quoting too: datadog.yaml's paths are under it.
    let s = slug(&served, "yaml: #{*&x}'q", &[]);
    let mut how = Run::vars(&[
        ("DD_API_KEY", "k"),
        ("DD_ENABLE_HEROKU_POSTGRES", "true"),
        ("DD_ENABLE_HEROKU_REDIS", "true"),
        ("DD_LOG_LEVEL", "debug"),
    ]);
    let mut pg_vars = Vec::new();
    let mut redis_vars = Vec::new();
    for (i, pw) in HOSTILE_PASSWORDS.iter().enumerate() {
        how.vars.push((Box::leak(format!("PG{i}").into_boxed_str()), format!("postgres://user{i}:{pw}@db{i}.example:5432/main{i}").into()));
        how.vars.push((Box::leak(format!("RD{i}").into_boxed_str()), format!("rediss://default:{pw}@cache{i}.example:6380/{i}").into()));
        pg_vars.push(format!("PG{i}"));
        redis_vars.push(format!("RD{i}"));
    }
    // Every other URL part hostile too; a port that is not a canonical number stays a string.
    how.vars.push(("PGX", "postgres://u\n- x: y:p #s3cret@h: 1 #c:0123/d\n  b: c".into()));
    // A value that is not UTF-8 cannot go into YAML: skipped, named, never shown.
    how.vars.push(("BAD_BYTES_URL", OsStr::from_bytes(b"postgres://u:s3cret\xff@h:5432/d").to_os_string()));
    let pg_list = format!("{}, PGX,BAD_BYTES_URL", pg_vars.join(","));
    how.vars.push(("DD_POSTGRES_URL_VAR", pg_list.into()));
    how.vars.push(("DD_REDIS_URL_VAR", redis_vars.join(",").into()));
    // Under umask 000 a file created with the default mode would be 0666.
    how.before = "umask 000";
    let started = run(&s, &how, 2);
    assert_eq!(started.launches.len(), 2, "the agents start without the refused URL: {}", started.output);
    let conf = s.dir.join(".apt/etc/datadog-agent");
    let pg = instances(&conf.join("conf.d/postgres.d/conf.yaml"));
    assert_eq!(pg.len(), HOSTILE_PASSWORDS.len() + 1, "one instance per usable URL");
    for (i, pw) in HOSTILE_PASSWORDS.iter().enumerate() {
        let expected = [
            ("host", format!("db{i}.example")),
            ("username", format!("user{i}")),
            ("password", pw.to_string()),
            ("port", "5432".into()),
            ("dbname", format!("main{i}")),
            ("ssl", "require".into()),
            ("disable_generic_tags", "false".into()),
        ];
        assert_eq!(fields(&pg[i]), expected.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<Vec<_>>(), "{pw:?}");
        assert_eq!(pg[i]["password"].as_str().unwrap().as_bytes(), pw.as_bytes());
    }
    let x = &pg[HOSTILE_PASSWORDS.len()];
    assert_eq!(
        (x["username"].as_str(), x["password"].as_str(), x["host"].as_str(), x["port"].as_str(), x["dbname"].as_str()),
        (Some("u\n- x"), Some(" y:p #s3cret"), Some("h: 1 #c"), Some("0123"), Some("d\n  b: c"))
    );
    let redis = instances(&conf.join("conf.d/redisdb.d/conf.yaml"));
    assert_eq!(redis.len(), HOSTILE_PASSWORDS.len());
    for (i, pw) in HOSTILE_PASSWORDS.iter().enumerate() {
        assert_eq!(redis[i]["password"].as_str().map(str::as_bytes), Some(pw.as_bytes()), "{pw:?}");
        assert_eq!((redis[i]["port"].as_i64(), redis[i]["db"].as_i64(), redis[i]["username"].as_str()), (Some(6380), Some(i as i64), Some("default")));
    }
    assert!(started.output.contains("BAD_BYTES_URL is not valid UTF-8"), "{}", started.output);
    assert!(!started.output.contains("s3cret"), "a password was printed: {}", started.output);
    // datadog.yaml's paths read back exactly under the hostile HOME.
    let docs = YamlLoader::load_from_str(&fs::read_to_string(conf.join("datadog.yaml")).unwrap()).unwrap();
    assert_eq!(docs[0]["confd_path"].as_str(), Some(conf.join("conf.d").to_str().unwrap()));
    assert_eq!(docs[0]["run_path"].as_str(), Some(s.dir.join(".apt/opt/datadog-agent/run").to_str().unwrap()));
    for secret in ["datadog.yaml", "conf.d/postgres.d/conf.yaml", "conf.d/redisdb.d/conf.yaml"] {
        assert_eq!(mode(&conf.join(secret)), 0o600, "{secret}");
    }
    // The default variables, without the indirection.
    let pw = HOSTILE_PASSWORDS[1];
    let started = source(
        &s,
        &[
            ("DD_API_KEY", "k"),
            ("DD_ENABLE_HEROKU_POSTGRES", "true"),
            ("DATABASE_URL", &format!("postgres://u:{pw}@h:5432/d")),
            ("DD_ENABLE_HEROKU_REDIS", "true"),
            ("REDIS_URL", &format!("redis://:{pw}@r:6379")),
        ],
        2,
    );
    assert_eq!(started.launches.len(), 2);
    assert_eq!(instances(&conf.join("conf.d/postgres.d/conf.yaml"))[0]["password"].as_str(), Some(pw));
    assert_eq!(instances(&conf.join("conf.d/redisdb.d/conf.yaml"))[0]["password"].as_str(), Some(pw));
}

/// The launched programs with their arguments, and each one's value of `name` (`None`: unset).
fn seen(started: &Started, name: &str) -> Vec<Option<String>> {
    started.launches.iter().map(|l| l.get(name).cloned()).collect()
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
