//! `cargo xtask test [ARGS...]`: the README's test command.
//!
//! The shared-state tests run a real Redis Cluster, so they need
//! `redis-server` and `redis-cli`. A machine with only the Rust toolchain
//! has neither: this task finds them on `PATH`, or in `target/tools/redis`
//! from an earlier run, or fetches Debian's packages into that directory
//! with `apt-get download` and unpacks them with `dpkg-deb` (no root
//! needed, nothing installed system-wide), then runs
//! `cargo test --workspace --exclude sls-benches ARGS...` with them on
//! `PATH`. The token import tests need python-pskc and the authenticator
//! app tests pyotp (both from PyPI), which it installs with pip into
//! `target/tools/python` when Python lacks them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian's packages that make a working `redis-server` and `redis-cli`:
/// the binaries and the libraries they link that a minimal system lacks.
const PACKAGES: [&str; 4] = ["redis-server", "redis-tools", "liblzf1", "libjemalloc2"];

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
        Some("redis") => match redis_tools(&workspace()) {
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

/// Runs the whole test suite with the Redis server reachable.
fn test(args: Vec<OsString>) -> Result<ExitCode, String> {
    let root = workspace();
    let tools = redis_tools(&root)?;
    let python = python_packages(&root)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        // The benches are run by `cargo bench` (and once each by CI): their
        // criterion pulls features into shared crates that the binaries the
        // tests start do not have, which would build every crate twice.
        .args(["test", "--workspace", "--exclude", "sls-benches"])
        .args(args);
    if let Some(dir) = &python {
        command.env("PYTHONPATH", prepend("PYTHONPATH", dir)?);
    }
    if let Some(tools) = &tools {
        command.env("PATH", prepend("PATH", &tools.bin)?);
        command.env("LD_LIBRARY_PATH", prepend("LD_LIBRARY_PATH", &tools.lib)?);
    }
    let status = command
        .status()
        .map_err(|e| format!("running cargo test: {e}"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
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

/// Where an unpacked Redis lives.
struct Tools {
    bin: PathBuf,
    lib: PathBuf,
}

/// `None` when `redis-server` and `redis-cli` are on `PATH` already.
fn redis_tools(root: &Path) -> Result<Option<Tools>, String> {
    if on_path("redis-server") && on_path("redis-cli") {
        return Ok(None);
    }
    let dir = root.join("target/tools/redis");
    let tools = Tools {
        bin: dir.join("root/usr/bin"),
        // Debian's multiarch directory: x86_64-linux-gnu, aarch64-linux-gnu.
        lib: dir.join(format!("root/usr/lib/{}-linux-gnu", std::env::consts::ARCH)),
    };
    if works(&tools) {
        return Ok(Some(tools));
    }
    eprintln!(
        "xtask: redis-server is not installed; fetching Debian's package into {}",
        dir.display()
    );
    fetch(&dir)?;
    if works(&tools) {
        Ok(Some(tools))
    } else {
        Err(format!(
            "unpacked Redis in {} does not run; install it instead (Debian/Ubuntu: apt-get install redis-server)",
            dir.display()
        ))
    }
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn works(tools: &Tools) -> bool {
    ["redis-server", "redis-cli"].iter().all(|program| {
        Command::new(tools.bin.join(program))
            .arg("--version")
            .env("LD_LIBRARY_PATH", &tools.lib)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Downloads the packages with the system's apt sources and unpacks them
/// under `dir/root`. Without package lists (a fresh machine), reads them
/// first into `dir/apt`, which needs no root.
fn fetch(dir: &Path) -> Result<(), String> {
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    if !download(&debs, &[]) {
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
        if !updated || !download(&debs, &private) {
            return Err(
                "could not download Redis with apt-get; install it (Debian/Ubuntu: apt-get install redis-server)".into(),
            );
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

/// `apt-get download` of the packages into `debs`; whether it worked.
fn download(debs: &Path, options: &[String]) -> bool {
    Command::new("apt-get")
        .current_dir(debs)
        .args(options)
        .args(["-q", "download"])
        .args(PACKAGES)
        .status()
        .is_ok_and(|s| s.success())
}

/// `dir` in front of the environment variable `name`'s paths.
fn prepend(name: &str, dir: &Path) -> Result<OsString, String> {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(existing) = std::env::var_os(name) {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).map_err(|e| format!("{name}: {e}"))
}
