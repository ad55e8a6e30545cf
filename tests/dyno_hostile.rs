//! Dyno start under hostile input: values that break pasted YAML, a non-root dyno user on
//! read-only directories, symlinks out of the slug or the app's folder. The real
//! `.profile.d/datadog.sh` over a slug built by bin/compile, as in dyno.rs.

mod common;
mod dyno_support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::Served;
use dyno_support::{Run, fields, instances, is_root, mode, owned_copy, run, slug, source};
use yaml_rust2::YamlLoader;

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
    for made in ["conf.d/postgres.d", "conf.d/redisdb.d"] {
        assert_eq!(mode(&conf.join(made)), 0o755, "{made}: never group- or world-writable");
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

#[test]
fn dyno_start_as_an_unprivileged_user_on_read_only_directories() {
    let served = Served::start();
    let built = slug(&served, "nonroot", &[]);
    fs::create_dir_all(built.dir.join("datadog/conf.d/nginx.d")).unwrap();
    fs::write(built.dir.join("datadog/conf.d/nginx.d/conf.yaml"), "instances: [{}]\n").unwrap();
    let parent = tempfile::tempdir().unwrap();
    let user = is_root().then_some(65534);
    let s = owned_copy(&built, &parent, user);
    let apt = s.dir.join(".apt");
    // Modes a package may ship: read-only directories, and one without any access.
    let modes = [
        ("etc/datadog-agent/conf.d/cpu.d", 0o000),
        ("etc/datadog-agent/conf.d", 0o555),
        ("etc/datadog-agent", 0o555),
        ("etc", 0o555),
        ("opt/datadog-agent/embedded/bin", 0o555),
        ("opt/datadog-agent/embedded/ssl", 0o555),
        ("opt/datadog-agent/run", 0o555),
        ("opt/datadog-agent", 0o555),
    ];
    for (dir, m) in modes {
        fs::set_permissions(apt.join(dir), fs::Permissions::from_mode(m)).unwrap();
    }
    let how = Run {
        user,
        ..Run::vars(&[
            ("DD_API_KEY", "k"),
            ("DD_DISABLE_HOST_METRICS", "true"),
            ("DD_ENABLE_HEROKU_POSTGRES", "true"),
            ("DATABASE_URL", "postgres://u:p@h:5432/d"),
        ])
    };
    let started = run(&s, &how, 2);
    assert_eq!(started.launches.len(), 2, "{}", started.output);
    let conf = apt.join("etc/datadog-agent");
    for (dir, m) in modes {
        // Put back afterwards, except where the agents write later (auth_token, run files).
        let expected = if ["etc/datadog-agent", "opt/datadog-agent/run"].contains(&dir) { m | 0o700 } else { m };
        assert_eq!(mode(&apt.join(dir)), expected, "{dir}");
    }
    fs::set_permissions(conf.join("conf.d/cpu.d"), fs::Permissions::from_mode(0o755)).unwrap();
    assert!(conf.join("conf.d/cpu.d/conf.yaml.default_disabled").exists());
    assert!(conf.join("conf.d/nginx.d/conf.yaml").exists());
    assert_eq!(instances(&conf.join("conf.d/postgres.d/conf.yaml"))[0]["password"].as_str(), Some("p"));
    assert_eq!(fs::read_link(apt.join("opt/datadog-agent/embedded/bin/python")).unwrap(), Path::new("python3"));
    for written in ["datadog.yaml", "install_info", "conf.d/postgres.d/conf.yaml"] {
        let meta = fs::metadata(conf.join(written)).unwrap();
        assert_eq!((meta.mode() & 0o777, user.is_none_or(|id| meta.uid() == id)), (0o600, true), "{written}");
    }
    assert!(apt.join("var/log/datadog").is_dir());
}

#[test]
fn writes_never_follow_links_out_and_app_files_that_lead_out_are_not_copied() {
    let served = Served::start();
    let s = slug(&served, "links", &[]);
    let outside = served.dir.path().join("outside");
    fs::create_dir_all(outside.join("pg")).unwrap();
    fs::write(outside.join("target.yaml"), "keep").unwrap();
    fs::write(outside.join("secret.yaml"), "outside-s3cret").unwrap();
    let conf = s.dir.join(".apt/etc/datadog-agent");
    // The package's files at the names dyno start writes, pointing out of the slug.
    std::os::unix::fs::symlink(outside.join("target.yaml"), conf.join("datadog.yaml")).unwrap();
    std::os::unix::fs::symlink(outside.join("target.yaml"), conf.join("install_info")).unwrap();
    let python = s.dir.join(".apt/opt/datadog-agent/embedded/bin/python");
    let _ = fs::remove_file(&python);
    std::os::unix::fs::symlink(outside.join("target.yaml"), &python).unwrap();
    // The app's files that lead out of its datadog folder, and one that would block a reader.
    let app = s.dir.join("datadog");
    fs::create_dir_all(app.join("conf.d")).unwrap();
    fs::create_dir_all(app.join("checks.d")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.yaml"), app.join("conf.d/leak.yaml")).unwrap();
    std::os::unix::fs::symlink(&outside, app.join("conf.d/out.d")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.yaml"), app.join("checks.d/leak.py")).unwrap();
    let fifo = Command::new("mkfifo").arg(app.join("conf.d/pipe.yaml")).output().unwrap();
    assert!(fifo.status.success());
    fs::write(app.join("conf.d/fine.yaml"), "instances: [{}]\n").unwrap();
    let how = Run { before: "", ..Run::vars(&[("DD_API_KEY", "k"), ("DD_ENABLE_HEROKU_POSTGRES", "true"), ("DATABASE_URL", "postgres://u:p@h:5432/d")]) };
    let started = run(&s, &how, 2);
    assert_eq!(started.launches.len(), 2, "{}", started.output);
    assert_eq!(fs::read_to_string(outside.join("target.yaml")).unwrap(), "keep");
    for written in ["datadog.yaml", "install_info"] {
        assert!(fs::symlink_metadata(conf.join(written)).unwrap().is_file(), "{written} was written through its link");
    }
    assert_eq!(fs::read_link(&python).unwrap(), Path::new("python3"));
    assert!(conf.join("conf.d/fine.d/conf.yaml").exists());
    for absent in ["conf.d/leak.d", "conf.d/out.d", "checks.d/leak.py", "conf.d/pipe.d"] {
        assert!(fs::symlink_metadata(conf.join(absent)).is_err(), "{absent} was copied");
    }
    assert!(started.output.contains("leak.yaml") && started.output.contains("pipe.yaml"), "{}", started.output);
    assert!(!started.output.contains("outside-s3cret"));

    // A package whose conf.d, or an integration's directory, is a link out: refused by name,
    // nothing written out there, and the app starts without the agent.
    fs::rename(conf.join("conf.d/postgres.d"), outside.join("old-postgres.d")).unwrap();
    std::os::unix::fs::symlink(outside.join("pg"), conf.join("conf.d/postgres.d")).unwrap();
    let started = run(&s, &how, 0);
    assert!(started.output.contains("postgres.d is a symbolic link"), "{}", started.output);
    assert_eq!(fs::read_dir(outside.join("pg")).unwrap().count(), 0);
    assert!(started.launches.is_empty(), "{:?}\n{}", started.launches, started.output);
    assert!(started.env["DD_TAGS"].starts_with("dyno:web.1 "), "the app still gets its tags");
    fs::remove_file(conf.join("conf.d/postgres.d")).unwrap();
    fs::rename(conf.join("conf.d"), outside.join("old-conf.d")).unwrap();
    std::os::unix::fs::symlink(outside.join("pg"), conf.join("conf.d")).unwrap();
    let started = run(&s, &how, 0);
    assert!(started.output.contains("conf.d is a symbolic link"), "{}", started.output);
    assert_eq!(fs::read_dir(outside.join("pg")).unwrap().count(), 0);
    assert!(started.launches.is_empty(), "{:?}\n{}", started.launches, started.output);
}
