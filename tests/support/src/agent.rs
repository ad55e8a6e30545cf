//! Generated Datadog Agent packages with the real package's layout (the parts the strip
//! recipe and the dyno start touch), at a chosen scale: which binaries exist per version,
//! both Pythons in agent 6 from 6.14, absolute symlinks that break under `.apt`, hard links,
//! pkg-config files, botocore data, static libraries, docs.

use crate::debs::{Compression, DebSpec};

/// Numeric parts of an upstream version such as `1:7.52.1-1` → `[7, 52, 1]`.
pub fn version_parts(version: &str) -> Vec<u64> {
    let upstream = version.split_once(':').map(|(_, v)| v).unwrap_or(version);
    let upstream = upstream.rsplit_once('-').map(|(u, _)| u).unwrap_or(upstream);
    upstream.split('.').map_while(|p| p.parse().ok()).collect()
}

fn at_least(v: &[u64], other: &[u64]) -> bool {
    let n = v.len().max(other.len());
    for i in 0..n {
        let (a, b) = (v.get(i).copied().unwrap_or(0), other.get(i).copied().unwrap_or(0));
        if a != b {
            return a > b;
        }
    }
    true
}

/// Deterministic filler bytes (xorshift), so sizes are realistic and compression honest.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Text-like filler that compresses like code does.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] =
        ["def ", "return ", "self", ".config", " = ", "import ", "metric", "(value)", "\n", "    ", "tags", "# "];
    let bytes = noise(seed, len / 4 + 1);
    let mut out = Vec::with_capacity(len + 16);
    for b in bytes {
        out.extend_from_slice(WORDS[(b % 12) as usize].as_bytes());
        if out.len() >= len {
            break;
        }
    }
    out.truncate(len);
    out
}

/// How big a generated agent is.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Extra Python modules per site-packages package.
    pub modules_per_package: usize,
    /// Number of site-packages packages.
    pub packages: usize,
    /// Size of each main binary.
    pub binary_bytes: usize,
}

impl Scale {
    /// A few hundred files: for tests.
    pub const SMALL: Scale = Scale { modules_per_package: 3, packages: 6, binary_bytes: 20_000 };
    /// Close to the real agent 7 package: ~25,000 files, several hundred MB unpacked.
    pub const REAL: Scale = Scale { modules_per_package: 60, packages: 400, binary_bytes: 24_000_000 };
}

/// A generated agent package: `package` is `datadog-agent` or `datadog-heroku-agent`,
/// `version` as in the repository (`1:7.81.2-1`).
pub fn agent_deb(package: &str, version: &str, scale: Scale) -> DebSpec {
    let v = version_parts(version);
    let major = v.first().copied().unwrap_or(7);
    let mut d = DebSpec::new(package, version);
    // Multi-block, as dpkg-deb ≥ 1.21 writes data.tar.xz.
    d.compression = Compression::XzMultiBlock;
    // Binaries compress like real ones do (about 3:1): part code-like text, part noise.
    let bin = |seed: u64| {
        let mut b = b"\x7fELF-fake-binary\n".to_vec();
        b.extend(noise(seed, scale.binary_bytes / 4));
        b.extend(text(seed, scale.binary_bytes - scale.binary_bytes / 4));
        b
    };
    let root = "opt/datadog-agent";
    d = d.file(&format!("{root}/bin/agent/agent"), 0o755, bin(1));
    d = d.file(&format!("{root}/embedded/bin/trace-agent"), 0o755, bin(2));
    d = d.file(&format!("{root}/embedded/bin/system-probe"), 0o755, bin(3));
    d = d.file(&format!("{root}/embedded/bin/security-agent"), 0o755, bin(4));
    d = d.file(&format!("{root}/embedded/bin/secret-generic-connector"), 0o755, bin(5));
    d = d.file(&format!("{root}/embedded/bin/clang-bpf"), 0o755, bin(6));
    d = d.file(&format!("{root}/embedded/bin/llc-bpf"), 0o755, bin(7));
    d = d.file(&format!("{root}/embedded/sbin/gstatus"), 0o755, bin(8));
    let before_768 = major == 6 || !at_least(&v, &[7, 68]);
    if before_768 {
        d = d.file(&format!("{root}/embedded/bin/process-agent"), 0o755, bin(9));
    }
    let combined_from = if major == 6 { [6, 52] } else { [7, 52] };
    if before_768 && at_least(&v, &combined_from) {
        d = d.file(&format!("{root}/bin/agent/core-agent"), 0o755, bin(10));
    }
    // Pythons: agent 6 before 6.14 has only 2.7; 6.14+ has both; 7 has only 3.
    let mut pythons = Vec::new();
    if major == 6 {
        pythons.push("2.7");
    }
    if major == 7 || at_least(&v, &[6, 14]) {
        pythons.push(if major == 7 { "3.12" } else { "3.8" });
    }
    for (i, py) in pythons.iter().enumerate() {
        let seed = 100 + i as u64 * 1000;
        let short = &py[..1];
        let lib = format!("{root}/embedded/lib/python{py}");
        let site = format!("{lib}/site-packages");
        d = d.file(&format!("{root}/embedded/bin/python{py}"), 0o755, bin(seed));
        d = d.hardlink(&format!("{root}/embedded/bin/python{short}"), &format!("{root}/embedded/bin/python{py}"));
        d = d.file(&format!("{root}/embedded/bin/pip{short}"), 0o755, format!("#!/opt/datadog-agent/embedded/bin/python{py}\n"));
        d = d.file(&format!("{root}/embedded/bin/pydoc{short}"), 0o755, "#!/bin/sh\n");
        d = d.file(&format!("{root}/embedded/lib/libpython{py}.so.1.0"), 0o644, bin(seed + 1));
        d = d.symlink(&format!("{root}/embedded/lib/libpython{py}.so"), &format!("libpython{py}.so.1.0"));
        d = d.file(&format!("{lib}/config-{py}-x86_64-linux-gnu/libpython{py}.a"), 0o644, bin(seed + 2));
        d = d.file(&format!("{lib}/os.py"), 0o644, text(seed + 3, 4000));
        for svc in ["s3", "ec2", "sqs", "dynamodb"] {
            d = d.file(&format!("{site}/botocore/data/{svc}/2006-03-01/service-2.json"), 0o644, text(seed + 4, 3000));
        }
        d = d.file(&format!("{site}/botocore/__init__.py"), 0o644, text(seed + 5, 500));
        d = d.file(&format!("{site}/Cryptodome/SelfTest/__init__.py"), 0o644, text(seed + 6, 800));
        d = d.file(&format!("{site}/Cryptodome/Cipher/AES.py"), 0o644, text(seed + 7, 800));
        for pkg in ["kubernetes", "lxml", "openstack", "pysnmp_mibs", "pyVim", "pyVmomi", "cm_client"] {
            d = d.file(&format!("{site}/{pkg}/__init__.py"), 0o644, text(seed + 8, 1200));
        }
        for p in 0..scale.packages {
            for m in 0..scale.modules_per_package {
                let path = format!("{site}/datadog_checks/check{p}/module_{m}.py");
                d = d.file(&path, 0o644, text(seed + (p * 1000 + m) as u64, 2500));
            }
        }
    }
    if major == 6 {
        d = d.file(&format!("{root}/embedded/bin/pydoc"), 0o755, "#!/bin/sh\n");
    }
    // Absolute symlinks that point into /opt and break under .apt (the recipe removes them).
    d = d.symlink(&format!("{root}/embedded/bin/2to3"), "/opt/datadog-agent/embedded/bin/2to3-3");
    d = d.symlink(&format!("{root}/embedded/bin/pip"), "/opt/datadog-agent/embedded/bin/pip3");
    d = d.symlink(&format!("{root}/embedded/bin/installer"), "/opt/datadog-agent/bin/datadog-installer");
    d = d.file(&format!("{root}/embedded/ssl/certs/cacert.pem"), 0o644, text(11, 2000));
    d = d.symlink(&format!("{root}/embedded/ssl/cert.pem"), "/opt/datadog-agent/embedded/ssl/certs/cacert.pem");
    d = d.file(&format!("{root}/embedded/lib/libssl.so.3"), 0o644, bin(12));
    d = d.file(&format!("{root}/embedded/lib/libssl.a"), 0o644, bin(13));
    d = d.file(&format!("{root}/embedded/lib/libbcc.so.0"), 0o644, bin(14));
    d = d.file(
        &format!("{root}/embedded/lib/pkgconfig/libffi.pc"),
        0o644,
        "prefix=/opt/datadog-agent/embedded\nexec_prefix=${prefix}\nlibdir=${exec_prefix}/lib\n\nName: libffi\nDescription: Library supporting Foreign Function Interfaces\nVersion: 3.4.4\nLibs: -L${libdir} -lffi\n",
    );
    d = d.file(&format!("{root}/embedded/share/doc/openssl/README"), 0o644, text(15, 3000));
    d = d.file(&format!("{root}/embedded/share/man/man1/openssl.1"), 0o644, text(16, 3000));
    d = d.file(&format!("{root}/embedded/share/system-probe/ebpf/tracer.o"), 0o644, bin(17));
    d = d.file(&format!("{root}/embedded/nikos/embedded/bin/nikos"), 0o755, bin(18));
    d = d.file(&format!("{root}/embedded/.installed_by_pkg.txt"), 0o644, "datadog-agent\n");
    d = d.file(&format!("{root}/sources/openssl/LICENSE"), 0o644, text(19, 2000));
    d = d.file(&format!("{root}/run/.keep"), 0o644, "");
    d = d.file(&format!("{root}/version-manifest.txt"), 0o644, format!("datadog-agent {version}\n"));
    d = d.file(
        "etc/datadog-agent/datadog.yaml.example",
        0o644,
        "# api_key:\n# confd_path:\n# additional_checksd:\n# cloud_provider_metadata:\n# apm_config:\n# process_config:\n# logs_config:\n",
    );
    d = d.file("etc/datadog-agent/conf.d/cpu.d/conf.yaml.default", 0o644, "init_config:\ninstances:\n  - {}\n");
    d = d.file("etc/datadog-agent/conf.d/disk.d/conf.yaml.default", 0o644, "init_config:\ninstances:\n  - {}\n");
    d = d.file("lib/systemd/system/datadog-agent.service", 0o644, "[Unit]\nDescription=Datadog Agent\n");
    d
}

/// One Python distribution that [`with_python_distributions`] adds to every site-packages.
pub struct PythonDist {
    /// The `<name>-<version>` stem of its record directory.
    pub stem: &'static str,
    /// The headers of its METADATA (or PKG-INFO).
    pub headers: &'static str,
    /// What it installs, relative to site-packages (its RECORD lists these and its own files).
    pub installs: &'static [&'static str],
    /// An egg-info directory (PKG-INFO and top_level.txt) instead of a dist-info one.
    pub egg: bool,
}

/// The distributions [`with_python_distributions`] adds: one the recipe keeps whole, one it
/// strips in part (botocore's data), one whose code it removes but not its record
/// (kubernetes), a single-module one, and an egg-info.
pub const PYTHON_DISTS: &[PythonDist] = &[
    PythonDist {
        stem: "requests-2.32.3",
        headers: "Metadata-Version: 2.4\nName: requests\nVersion: 2.32.3\nLicense-Expression: Apache-2.0\n",
        installs: &["requests/__init__.py", "requests/api.py"],
        egg: false,
    },
    PythonDist {
        stem: "botocore-1.34.0",
        headers: "Metadata-Version: 2.1\nName: botocore\nVersion: 1.34.0\nLicense: Apache License 2.0\n",
        installs: &["botocore/__init__.py", "botocore/data/s3/2006-03-01/service-2.json", "botocore/data/ec2/2006-03-01/service-2.json"],
        egg: false,
    },
    PythonDist {
        stem: "kubernetes-29.0.0",
        headers: "Metadata-Version: 2.1\nName: kubernetes\nVersion: 29.0.0\nLicense: Apache License Version 2.0\n",
        installs: &["kubernetes/__init__.py"],
        egg: false,
    },
    PythonDist {
        stem: "six-1.16.0",
        headers: "Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\nLicense: UNKNOWN\nClassifier: License :: OSI Approved :: MIT License\n",
        installs: &["six.py"],
        egg: false,
    },
    PythonDist {
        stem: "simplejson-3.6.5-py2.7",
        headers: "Metadata-Version: 1.1\nName: simplejson\nVersion: 3.6.5\nLicense: MIT License\n",
        installs: &["simplejson/__init__.py"],
        egg: true,
    },
];

/// The Omnibus build manifest [`with_python_distributions`] adds, as Omnibus writes it into
/// the install directory.
pub const OMNIBUS_MANIFEST: &str = r#"{
  "manifest_format": 2,
  "software": {
    "openssl3": {"locked_version": "3.0.15", "locked_source": {"url": "https://example.invalid/openssl-3.0.15.tar.gz"}, "source_type": "url", "described_version": "3.0.15", "license": "Apache-2.0"},
    "datadog-agent": {"locked_version": "0123456789abcdef0123456789abcdef01234567", "source_type": "git", "described_version": "7.81.2", "license": "Apache-2.0"},
    "zlib": {"locked_version": "1.3.1", "source_type": "url", "license": "Zlib"},
    "preparation": {"locked_version": null, "source_type": null, "described_version": null, "license": "Unspecified"}
  },
  "build_version": "7.81.2-1",
  "license": "Apache-2.0"
}
"#;

/// The `site-packages` directories of `d` (paths in the package), sorted, each once.
pub fn site_packages_dirs(d: &DebSpec) -> Vec<String> {
    let mut sites: Vec<String> = d
        .entries
        .iter()
        .filter_map(|(p, _)| {
            let p = String::from_utf8_lossy(p);
            p.find("/site-packages/").map(|at| p[..at + "/site-packages".len()].to_string())
        })
        .collect();
    sites.sort();
    sites.dedup();
    sites
}

/// `d` with [`PYTHON_DISTS`] installed in each of its site-packages directories (with
/// METADATA, RECORD and the files they install) and the Omnibus build manifest
/// `opt/datadog-agent/version-manifest.json`.
pub fn with_python_distributions(mut d: DebSpec) -> DebSpec {
    for site in &site_packages_dirs(&d) {
        for dist in PYTHON_DISTS {
            let record_dir = format!("{}.{}", dist.stem, if dist.egg { "egg-info" } else { "dist-info" });
            let mut record = String::new();
            for file in dist.installs {
                let path = format!("{site}/{file}");
                // Files the package already has keep their contents.
                if !d.entries.iter().any(|(p, _)| p == path.as_bytes()) {
                    d = d.file(&path, 0o644, text(path.len() as u64, 300));
                }
                record.push_str(&format!("{file},sha256=x,300\n"));
            }
            let meta = if dist.egg { "PKG-INFO" } else { "METADATA" };
            d = d.file(&format!("{site}/{record_dir}/{meta}"), 0o644, format!("{}\nThe description.\n", dist.headers));
            if dist.egg {
                let tops: Vec<&str> = dist.installs.iter().map(|f| f.split('/').next().unwrap_or(f)).collect();
                d = d.file(&format!("{site}/{record_dir}/top_level.txt"), 0o644, format!("{}\n", tops.join("\n")));
            } else {
                record.push_str(&format!("{record_dir}/METADATA,sha256=x,100\n{record_dir}/RECORD,,\n"));
                d = d.file(&format!("{site}/{record_dir}/RECORD"), 0o644, record);
            }
        }
    }
    d.file("opt/datadog-agent/version-manifest.json", 0o644, OMNIBUS_MANIFEST)
}
