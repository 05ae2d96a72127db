//! Sets `NATTER_VERSION`, what `natter --version` prints: the package's version and the
//! commit it was built from, `0.1.0 (1a2b3c4)`.
//!
//! The commit is `NATTER_GIT_COMMIT` when set (the image's build passes it: its context
//! has no `.git`), else `git rev-parse --short HEAD` when this is a git checkout (a
//! worktree's `.git` is a file; git finds its way from there), else `unknown`. Nothing
//! here fails the build.

use std::{path::Path, process::Command};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NATTER_GIT_COMMIT");
    let given = std::env::var("NATTER_GIT_COMMIT")
        .ok()
        .map(|commit| commit.trim().to_string())
        .filter(|commit| !commit.is_empty());
    let commit = given.or_else(from_git).unwrap_or_else(|| "unknown".into());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=NATTER_VERSION={version} ({commit})");
}

/// The checkout's short commit, and the files that change with it marked for a rerun.
fn from_git() -> Option<String> {
    if !Path::new(".git").exists() {
        return None;
    }
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    // HEAD moves on a checkout; its reflog grows on every commit, reset or checkout in
    // this worktree; the branch's ref (loose or packed) moves on a commit made elsewhere.
    let mut watched = vec!["HEAD".to_string(), "logs/HEAD".into(), "packed-refs".into()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        // A path that does not exist would rerun this script (and rebuild) every time.
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(commit)
}

/// What `git args` prints, trimmed, if it runs and succeeds.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_string())
}
