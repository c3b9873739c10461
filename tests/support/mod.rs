//! Shared helpers of the end-to-end tests: the real binaries, built once.

#![allow(dead_code, unused_macros, unused_imports)] // each test binary uses its own part of the helpers

pub mod daemon;
pub mod deployment;
pub mod load;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// A test of the daemon's core, run once over QUIC and once over the
/// TCP/TLS fallback: `over_both!(name)` makes `name::quic` and `name::tcp`
/// of `async fn name(transport: Transport)` (with the daemon started
/// `.over(transport)`); `over_both!(name, (flavor = ...))` passes the
/// runtime's flavour to `tokio::test`.
macro_rules! over_both {
    ($name:ident $(, $flavor:tt)?) => {
        mod $name {
            #[tokio::test$($flavor)?]
            async fn quic() {
                super::$name(sls_sim::client::Transport::Quic).await
            }

            #[tokio::test$($flavor)?]
            async fn tcp() {
                super::$name(sls_sim::client::Transport::Tcp).await
            }
        }
    };
}
pub(crate) use over_both;

/// The workspace root.
pub fn workspace() -> &'static Path {
    // This crate lives in `<workspace>/tests`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
}

/// Path of a workspace binary, built with the profile this test was built
/// with. Cargo builds a package's binaries only for that package's own
/// tests, so the end-to-end crate asks cargo for them once per run.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/<this test> -> target/<profile>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test runs from target/<profile>/deps")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(workspace())
            // The test profile: the tests' own build of every crate is
            // reused (the dev profile's would be a second build of all).
            .args([
                "build",
                "--quiet",
                "--bins",
                "--workspace",
                "--profile",
                "test",
            ]);
        // Cargo sets these for this test crate; a build script that watches
        // one (ring's watches CARGO_MANIFEST_DIR) would see it change and
        // rebuild half the tree on every test run.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let per_crate = [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_BIN_",
                "CARGO_RUSTC_CURRENT_DIR",
            ];
            if per_crate.iter().any(|prefix| name.starts_with(prefix)) {
                build.env_remove(name.as_ref());
            }
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        profile_dir
    });
    dir.join(name)
}

/// Runs `sls-sim` with `args`.
pub fn sls_sim(args: &[&str]) -> Output {
    Command::new(binary("sls-sim"))
        .args(args)
        .output()
        .expect("run sls-sim")
}

/// Stdout of a run that must succeed, without the trailing newline.
pub fn stdout_ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout.clone()).expect("utf-8 stdout");
    text.strip_suffix('\n')
        .expect("one line of output")
        .to_owned()
}
