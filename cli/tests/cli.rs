//! The `kiln` binary's contract: help, clear errors, non-zero exits.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

#[test]
fn recipe_options_lists_allowed_values_and_defaults() {
    let recipe = concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/hello-c/recipe.toml");
    let out = kiln().args(["recipe", "options", recipe]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("-o opt=VALUE"), "{stdout}");
    assert!(stdout.contains("allowed: O0, O1, O2, Os   default: O2"), "{stdout}");
}

#[test]
fn a_missing_recipe_is_a_clear_error_and_a_non_zero_exit() {
    let out = kiln()
        .args(["recipe", "options", "/nonexistent/recipe.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot read recipe /nonexistent/recipe.toml"),
        "{stderr}"
    );
}
