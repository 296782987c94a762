//! Helpers the `st` binary's test files share: the model, the package folder and running `st`.
// Each test file uses a different subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// all-MiniLM-L6-v2, fetched on first use.
pub fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        st_hub::resolve(st_hub::DEFAULT_MODEL, &mut |m| eprintln!("{m}")).unwrap_or_else(|e| {
            panic!(
                "{e}\nfetch it with: cargo xtask download {}",
                st_hub::DEFAULT_MODEL
            )
        })
    })
}

/// This package's folder, read at run time: CI may build in one checkout and run in another.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Runs `st` with `stdin` piped in (or none); fails the test if it panicked.
pub fn st_with_stdin(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_st"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(bytes) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "st panicked: {stderr}");
    out
}

/// Its standard output, asserting it succeeded.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "st failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Its standard error, asserting it failed.
pub fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "st should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
