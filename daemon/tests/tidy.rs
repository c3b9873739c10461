//! Architecture invariants that the compiler does not check: the pure
//! modules (see ARCHITECTURE.md) never reach for I/O, the clock or an
//! async runtime.

use std::path::{Path, PathBuf};

/// Names whose appearance in a pure module means it does I/O or reads time
/// (plain address values such as `SocketAddr` are allowed).
const FORBIDDEN: &[&str] = &[
    "tokio",
    "quinn",
    "rustls",
    "std::fs",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "std::io",
    "std::env",
    "std::process",
    "std::thread",
    "SystemTime",
    "Instant",
    "println!",
    "eprintln!",
];

/// Modules that must stay pure, relative to `daemon/src`.
const PURE: &[&str] = &[
    "otp",
    "profile",
    "wire",
    "config",
    "policy",
    "engine/rules",
    "radius",
];

/// What the engine's decisions must not reach for either: they run on
/// records a store hands them, so neither a store, nor a lock, nor a wait.
const NOT_IN_RULES: &[&str] = &[
    "Mutex",
    "RwLock",
    "crate::sync",
    "async ",
    ".await",
    "redis",
    "redb",
    "Registry",
    "ClusterStore",
    "ChallengeTable",
    "Engine",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn pure_modules_do_no_io_and_read_no_clock() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offences = Vec::new();
    for module in PURE {
        let mut files = Vec::new();
        rust_files(&src.join(module), &mut files);
        assert!(!files.is_empty(), "module {module} has no files");
        let forbidden: Vec<&str> = if *module == "engine/rules" {
            FORBIDDEN.iter().chain(NOT_IN_RULES).copied().collect()
        } else {
            FORBIDDEN.to_vec()
        };
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for name in &forbidden {
                    if code.contains(name) {
                        offences.push(format!("{}:{}: {name}", file.display(), number + 1));
                    }
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "pure modules use I/O or time:\n{}",
        offences.join("\n")
    );
}
