//! `cargo xtask test [ARGS...]`: the README's test command.
//!
//! The shared-state tests run a real Redis Cluster, so they need
//! `redis-server` and `redis-cli`; the RADIUS tests run FreeRADIUS's
//! `radclient`. A machine with only the Rust toolchain has none of them:
//! this task finds them on `PATH`, or in `target/tools/NAME` from an
//! earlier run, or fetches Debian's packages into that directory with
//! `apt-get download` and unpacks them with `dpkg-deb` (no root needed,
//! nothing installed system-wide), then runs
//! `cargo test --workspace --exclude sls-benches ARGS...` with them on
//! `PATH`. The token import tests need python-pskc and the authenticator
//! app tests pyotp (both from PyPI), which it installs with pip into
//! `target/tools/python` when Python lacks them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match args.next().as_deref().and_then(|a| a.to_str()) {
        Some("test") => match test(args.collect()) {
            Ok(code) => code,
            Err(error) => {
                eprintln!("xtask: {error}");
                ExitCode::FAILURE
            }
        },
        Some("redis") => match tools(&workspace(), &REDIS) {
            Ok(tools) => {
                println!(
                    "{}",
                    tools.map_or_else(String::new, |t| t.bin.display().to_string())
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("xtask: {error}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "usage: cargo xtask test [CARGO TEST ARGS...]\n       cargo xtask redis   (fetch the Redis server only; prints where)"
            );
            ExitCode::from(2)
        }
    }
}

fn workspace() -> PathBuf {
    // This crate lives in `<workspace>/xtask`.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or(manifest.clone(), Path::to_path_buf)
}

/// Runs the whole test suite with Redis and radclient reachable.
fn test(args: Vec<OsString>) -> Result<ExitCode, String> {
    let root = workspace();
    // The Python client's tests run after the whole suite, not after a part of it.
    let whole_suite = args.is_empty();
    let toolsets = [tools(&root, &REDIS)?, tools(&root, &RADCLIENT)?];
    let python = python_packages(&root)?;
    let mut command = cargo(&root);
    command
        // The benches are run by `cargo bench` (and once each by CI): their
        // criterion pulls features into shared crates that the binaries the
        // tests start do not have, which would build every crate twice.
        .args(["test", "--workspace", "--exclude", "sls-benches"])
        .args(args);
    if let Some(dir) = &python {
        command.env(
            "PYTHONPATH",
            prepend("PYTHONPATH", std::slice::from_ref(dir))?,
        );
    }
    let unpacked: Vec<&Tools> = toolsets.iter().flatten().collect();
    if !unpacked.is_empty() {
        let bins: Vec<PathBuf> = unpacked.iter().map(|t| t.bin.clone()).collect();
        let libs: Vec<PathBuf> = unpacked.iter().flat_map(|t| t.lib.clone()).collect();
        command.env("PATH", prepend("PATH", &bins)?);
        command.env("LD_LIBRARY_PATH", prepend("LD_LIBRARY_PATH", &libs)?);
    }
    if let [_, Some(radclient)] = &toolsets {
        // An unpacked radclient reads its dictionaries from there, not
        // from /usr/share and /etc (tests/radius.rs passes them on).
        command.env(
            "SLS_RADCLIENT_DICTIONARIES",
            radclient.root.join("usr/share/freeradius"),
        );
        command.env(
            "SLS_RADCLIENT_RADDB",
            radclient.root.join("etc/freeradius/3.0"),
        );
    }
    let status = command
        .status()
        .map_err(|e| format!("running cargo test: {e}"))?;
    let status = match status.code() {
        Some(0) if whole_suite => python_client(&root)?,
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    };
    Ok(status)
}

/// A cargo command in the workspace, without the variables `cargo run`
/// set for this task: a build script that watches one (ring's watches
/// `CARGO_MANIFEST_DIR`) would see it differ from the builds the tests
/// start, which drop them too (tests/support/mod.rs), and rebuild.
fn cargo(root: &Path) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root);
    let per_crate = [
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_CRATE_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_BIN_",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    for (name, _) in std::env::vars_os() {
        if per_crate
            .iter()
            .any(|prefix| name.to_string_lossy().starts_with(prefix))
        {
            command.env_remove(name);
        }
    }
    command
}

/// The Python client package (`clients/python`): installed with pip as a
/// user would (into `target/tools/sls-client`), then its tests run with
/// that copy against the daemon built for the Rust tests.
fn python_client(root: &Path) -> Result<ExitCode, String> {
    let package = root.join("clients/python");
    let installed = root.join("target/tools/sls-client");
    eprintln!("xtask: installing clients/python with pip and running its tests");
    // The build the end-to-end tests asked for (tests/support/mod.rs), so
    // nothing is compiled again: `-p slsd -p sls-sim` alone would unify
    // other features and build both crates a second time.
    let built = cargo(root)
        .args([
            "build",
            "--quiet",
            "--bins",
            "--workspace",
            "--profile",
            "test",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !built {
        return Err("building slsd and sls-sim for the Python client's tests failed".into());
    }
    // Built as pip builds any package (setuptools from the index), from
    // the sources alone: setuptools' build directory of a run before
    // could hold files since removed.
    let _ = std::fs::remove_dir_all(package.join("build"));
    let pip = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--upgrade", "--no-deps"])
        .arg("--target")
        .arg(&installed)
        .arg(&package)
        .status()
        .is_ok_and(|s| s.success());
    if !pip {
        return Err("pip could not install clients/python".into());
    }
    // The installed package, not the source tree, is what is imported.
    let path = [installed.clone(), package.join("tests")];
    let status = Command::new("python3")
        .current_dir(&package)
        .args(["-m", "unittest", "discover", "--verbose", "-s", "tests"])
        .env("PYTHONPATH", prepend("PYTHONPATH", &path)?)
        .env("SLS_BIN", root.join("target/debug"))
        .status()
        .map_err(|e| format!("running the Python client's tests: {e}"))?;
    if !status.success() {
        return Ok(ExitCode::FAILURE);
    }
    login_page(root, &path)
}

/// What the reference login page and its browser test import besides the
/// client: (module, pinned requirement), installed with pip into
/// `target/tools/gateway` when missing.
const GATEWAY_PACKAGES: [(&str, &str); 2] =
    [("flask", "flask==3.1.3"), ("selenium", "selenium==4.51.0")];

/// The reference login page (`examples/gateway`) in a real headless
/// Chromium: Debian's `chromium` and `chromium-driver`, which `.ci/run`
/// installs. Without them the test is skipped with a note, unless
/// `SLS_REQUIRE_BROWSER` is set (as CI sets it).
fn login_page(root: &Path, client: &[PathBuf]) -> Result<ExitCode, String> {
    let driver = std::env::var_os("SLS_CHROMEDRIVER")
        .map_or_else(|| PathBuf::from("/usr/bin/chromedriver"), PathBuf::from);
    if !driver.exists() {
        if std::env::var_os("SLS_REQUIRE_BROWSER").is_some() {
            return Err(format!(
                "{} is missing: install Debian's chromium and chromium-driver",
                driver.display()
            ));
        }
        eprintln!(
            "xtask: skipping the login page's browser test: no {} \
             (apt-get install chromium chromium-driver)",
            driver.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let dir = root.join("target/tools/gateway");
    for (module, requirement) in GATEWAY_PACKAGES {
        let found = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .env("PYTHONPATH", &dir)
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            continue;
        }
        let installed = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&dir)
            .arg(requirement)
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            return Err(format!("could not install {requirement} with pip"));
        }
    }
    eprintln!("xtask: the login page in headless Chromium");
    let mut path = vec![dir];
    path.extend_from_slice(client);
    let status = Command::new("python3")
        .current_dir(root.join("examples/gateway"))
        .args(["-m", "unittest", "--verbose", "test_browser"])
        .env("PYTHONPATH", prepend("PYTHONPATH", &path)?)
        .env("SLS_BIN", root.join("target/debug"))
        .status()
        .map_err(|e| format!("running the login page's browser test: {e}"))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Python packages written independently of sls (from PyPI), which the
/// tests use as the other side: python-pskc writes vendors' token files
/// (RFC 6030), pyotp reads an authenticator app's `otpauth://` URI and
/// computes its codes as apps do. Each is (module, pinned requirement).
const PYTHON_PACKAGES: [(&str, &str); 2] =
    [("pskc", "python-pskc==1.4"), ("pyotp", "pyotp==2.9.0")];

/// `None` when Python imports every package of [`PYTHON_PACKAGES`]
/// already; otherwise those missing are installed with pip into
/// `target/tools/python`, which goes on the tests' `PYTHONPATH`.
fn python_packages(root: &Path) -> Result<Option<PathBuf>, String> {
    let imports = |module: &str, path: Option<&Path>| {
        let mut command = Command::new("python3");
        command.args(["-c", &format!("import {module}")]);
        if let Some(path) = path {
            command.env("PYTHONPATH", path);
        }
        command.output().is_ok_and(|o| o.status.success())
    };
    if PYTHON_PACKAGES
        .iter()
        .all(|(module, _)| imports(module, None))
    {
        return Ok(None);
    }
    let dir = root.join("target/tools/python");
    for (module, requirement) in PYTHON_PACKAGES {
        if imports(module, Some(&dir)) {
            continue;
        }
        eprintln!(
            "xtask: {requirement} is not installed; installing it with pip into {}",
            dir.display()
        );
        let installed = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-warn-conflicts",
                "--target",
            ])
            .arg(&dir)
            .arg(requirement)
            .status()
            .is_ok_and(|s| s.success());
        if !installed || !imports(module, Some(&dir)) {
            return Err(format!(
                "could not install {requirement} with pip; install it (pip install {requirement})"
            ));
        }
    }
    Ok(Some(dir))
}

/// Programs from Debian's packages that the tests run as the other side:
/// what makes them work on a minimal system, and where they are unpacked.
struct Toolset {
    /// The directory under `target/tools`.
    name: &'static str,
    /// Programs that must answer their version flag.
    programs: &'static [(&'static str, &'static str)],
    /// The packages to download: the programs and the libraries and data
    /// they need that a minimal system lacks.
    packages: &'static [&'static str],
    /// What to tell a user who must install it instead.
    install: &'static str,
}

/// Redis for the shared-store tests: `redis-server` and `redis-cli`.
const REDIS: Toolset = Toolset {
    name: "redis",
    programs: &[("redis-server", "--version"), ("redis-cli", "--version")],
    packages: &["redis-server", "redis-tools", "liblzf1", "libjemalloc2"],
    install: "apt-get install redis-server",
};

/// FreeRADIUS's `radclient` for the RADIUS front end's tests, with its
/// dictionaries and libraries.
const RADCLIENT: Toolset = Toolset {
    name: "radclient",
    programs: &[("radclient", "-v")],
    packages: &[
        "freeradius-utils",
        "freeradius-common",
        "freeradius-config",
        "libfreeradius3",
        "libpcre3",
        "libpcap0.8",
        "libtalloc2",
    ],
    install: "apt-get install freeradius-utils",
};

/// Where an unpacked toolset lives.
struct Tools {
    root: PathBuf,
    bin: PathBuf,
    lib: Vec<PathBuf>,
}

impl Tools {
    fn under(dir: &Path) -> Self {
        let root = dir.join("root");
        // Debian's multiarch directories: x86_64-linux-gnu, aarch64-linux-gnu.
        let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
        Self {
            bin: root.join("usr/bin"),
            lib: vec![
                root.join("usr/lib").join(&multiarch),
                root.join("lib").join(&multiarch),
                root.join("usr/lib/freeradius"),
            ],
            root,
        }
    }

    fn library_path(&self) -> Result<OsString, String> {
        std::env::join_paths(&self.lib).map_err(|e| format!("LD_LIBRARY_PATH: {e}"))
    }
}

/// `None` when the toolset's programs are on `PATH` already; otherwise
/// they are unpacked under `target/tools/NAME` (fetched once).
fn tools(root: &Path, set: &Toolset) -> Result<Option<Tools>, String> {
    if set.programs.iter().all(|&(p, flag)| on_path(p, flag)) {
        return Ok(None);
    }
    let dir = root.join("target/tools").join(set.name);
    let tools = Tools::under(&dir);
    if works(&tools, set) {
        return Ok(Some(tools));
    }
    eprintln!(
        "xtask: {} is not installed; fetching Debian's packages into {}",
        set.name,
        dir.display()
    );
    fetch(&dir, set)?;
    if works(&tools, set) {
        Ok(Some(tools))
    } else {
        Err(format!(
            "unpacked {} in {} does not run; install it instead (Debian/Ubuntu: {})",
            set.name,
            dir.display(),
            set.install
        ))
    }
}

fn on_path(program: &str, flag: &str) -> bool {
    Command::new(program)
        .arg(flag)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn works(tools: &Tools, set: &Toolset) -> bool {
    let Ok(library_path) = tools.library_path() else {
        return false;
    };
    set.programs.iter().all(|&(program, flag)| {
        Command::new(tools.bin.join(program))
            .arg(flag)
            .env("LD_LIBRARY_PATH", &library_path)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Downloads the packages with the system's apt sources and unpacks them
/// under `dir/root`. Without package lists (a fresh machine), reads them
/// first into `dir/apt`, which needs no root.
fn fetch(dir: &Path, set: &Toolset) -> Result<(), String> {
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    if !download(&debs, &[], set.packages) {
        let lists = dir.join("apt/lists");
        let cache = dir.join("apt/cache");
        for d in [lists.join("partial"), cache.join("archives/partial")] {
            std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let private = [
            format!("-oDir::State::Lists={}", lists.display()),
            format!("-oDir::Cache={}", cache.display()),
            "-oDebug::NoLocking=1".to_owned(),
        ];
        let updated = Command::new("apt-get")
            .args(&private)
            .args(["-q", "update"])
            .status()
            .is_ok_and(|s| s.success());
        if !updated || !download(&debs, &private, set.packages) {
            return Err(format!(
                "could not download {} with apt-get; install it (Debian/Ubuntu: {})",
                set.name, set.install
            ));
        }
    }
    let root = dir.join("root");
    let entries = std::fs::read_dir(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "deb") {
            let unpacked = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&path)
                .arg(&root)
                .status()
                .is_ok_and(|s| s.success());
            if !unpacked {
                return Err(format!("dpkg-deb -x {} failed", path.display()));
            }
        }
    }
    Ok(())
}

/// `apt-get download` of `packages` into `debs`; whether it worked.
fn download(debs: &Path, options: &[String], packages: &[&str]) -> bool {
    Command::new("apt-get")
        .current_dir(debs)
        .args(options)
        .args(["-q", "download"])
        .args(packages)
        .status()
        .is_ok_and(|s| s.success())
}

/// `dirs` in front of the environment variable `name`'s paths.
fn prepend(name: &str, dirs: &[PathBuf]) -> Result<OsString, String> {
    let mut paths = dirs.to_vec();
    if let Some(existing) = std::env::var_os(name) {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).map_err(|e| format!("{name}: {e}"))
}
