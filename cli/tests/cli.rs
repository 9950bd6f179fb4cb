//! The `kiln` binary's contract: help, clear errors, non-zero exits.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
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

#[test]
fn system_describes_this_machine() {
    let out = kiln().args(["system", "--json"]).output().unwrap();
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["os"], std::env::consts::OS);
    assert_eq!(info["arch"], std::env::consts::ARCH);
    assert!(info["tools"]["cc"].is_string(), "{info}");
}

#[test]
fn a_recipe_signed_with_keygen_verifies_and_a_changed_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/hello-c");
    std::fs::create_dir_all(dir.path().join("hello-c/src")).unwrap();
    for file in ["recipe.toml", "src/hello.c"] {
        std::fs::copy(format!("{recipes}/{file}"), dir.path().join("hello-c").join(file)).unwrap();
    }
    let recipe = dir.path().join("hello-c/recipe.toml");
    let key = dir.path().join("publisher.key");
    let keygen = kiln().args(["keygen", "--key"]).arg(&key).output().unwrap();
    assert!(keygen.status.success());
    let public = String::from_utf8_lossy(&keygen.stdout).trim().to_string();
    assert_eq!(public.len(), 64);

    let id = |recipe: &std::path::Path| {
        let out = kiln().args(["recipe", "id"]).arg(recipe).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = id(&recipe);
    let signed = kiln()
        .args(["recipe", "sign"])
        .arg(&recipe)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(signed.status.success(), "{}", String::from_utf8_lossy(&signed.stderr));
    let text = std::fs::read_to_string(&recipe).unwrap();
    assert!(text.contains(&format!("publisher = \"{public}\"")), "{text}");
    assert_eq!(id(&recipe), before, "signing does not change the recipe id");

    std::fs::write(&recipe, text.replace("\"Os\"", "\"O3\"")).unwrap();
    let out = kiln().args(["recipe", "options"]).arg(&recipe).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sign it again with `kiln recipe sign`"));
}

#[test]
fn a_bad_store_size_says_what_a_size_looks_like() {
    let out = kiln().args(["node", "--max-store-size", "lots"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use for example 512MiB, 20GiB or 1TiB"));
}

#[test]
fn completions_cover_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let out = kiln().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for command in ["node", "request", "fetch", "publish", "status", "demo"] {
            assert!(script.contains(command), "{shell} completion lacks {command}");
        }
    }
    let out = kiln().args(["completions", "tcsh"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}

#[test]
fn quiet_hides_warnings_and_verbose_shows_more() {
    let recipe = concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/hello-c/recipe.toml");
    let run = |flag: &str| {
        let out = kiln().args([flag, "system"]).env_remove("RUST_LOG").output().unwrap();
        assert!(out.status.success(), "{flag}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert_eq!(run("-q"), "");
    // -q also leaves out the `kiln:` lines that say what was done.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let publish = |quiet: bool| {
        let mut command = kiln();
        if quiet {
            command.arg("-q");
        }
        let out = command
            .args(["publish", recipe, "--data-dir", data.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim().len(),
            64,
            "the hash on stdout"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(publish(false).contains("kiln: stored in"));
    assert_eq!(publish(true), "");
    assert!(run("-vvv").contains("log filter"), "-vvv logs debug lines");
    assert!(!run("-v").contains("log filter"), "-v logs no debug lines");
    let out = kiln().args(["-q", "-v", "recipe", "options", recipe]).output().unwrap();
    assert!(!out.status.success(), "-q and -v together are refused");
}

#[test]
fn the_config_file_sets_defaults_for_any_flag_and_the_command_line_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    let dir = |name: &str| tmp.path().join(name);
    std::fs::write(
        &config,
        format!(
            "data-dir = \"{}\"\n[system]\njson = true\n",
            dir("from-config").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str], env: Option<(&str, &std::path::Path)>| {
        let mut command = kiln();
        command
            .args(args)
            .env("KILN_CONFIG", &config)
            .env_remove("KILN_DATA_DIR");
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        command.output().unwrap()
    };
    // A top-level key applies to every command with that flag.
    assert!(run(&["id"], None).status.success());
    assert!(dir("from-config/node.key").exists());
    // The command line, and the flag's environment variable, win.
    assert!(run(&["id", "--data-dir", dir("typed").to_str().unwrap()], None)
        .status
        .success());
    assert!(dir("typed/node.key").exists());
    assert!(run(&["id"], Some(("KILN_DATA_DIR", &dir("from-env")))).status.success());
    assert!(dir("from-env/node.key").exists());
    // A command's table: a switch.
    let out = run(&["system"], None);
    assert!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok(),
        "--json from the file"
    );

    // Mistakes name the file and the setting.
    std::fs::write(&config, "[id]\nno-such-flag = 1\n").unwrap();
    let out = run(&["id"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("config.toml") && stderr.contains("\"no-such-flag\""),
        "{stderr}"
    );
    std::fs::write(&config, "[nodes]\ncontribute = true\n").unwrap();
    let stderr = String::from_utf8_lossy(&run(&["id"], None).stderr).into_owned();
    assert!(stderr.contains("no `nodes` command"), "{stderr}");
    // A misspelt top-level key is not silently ignored.
    std::fs::write(&config, "bootstrapp = [\"/ip4/127.0.0.1/tcp/1\"]\n").unwrap();
    let stderr = String::from_utf8_lossy(&run(&["id"], None).stderr).into_owned();
    assert!(
        stderr.contains("\"bootstrapp\"") && stderr.contains("no flag of any kiln command"),
        "{stderr}"
    );
    // A bad value from the file says it came from the file.
    std::fs::write(&config, "[node]\ntrust-publisher = [\"not-a-key\"]\n").unwrap();
    let out = run(&["node", "--contribute"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not-a-key") && stderr.contains("comes from the config file"),
        "{stderr}"
    );
}

#[test]
fn a_service_unit_is_written_hardened_and_passes_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().unwrap();
    for user in [false, true] {
        let dir = tmp.path().join(if user { "user" } else { "system" });
        let mut args = vec!["service", "install", "--unit-dir", dir.to_str().unwrap()];
        if user {
            args.push("--user");
        }
        args.extend(["--", "--trust-any-recipe", "--cpus", "1", "--label", "site=my basement"]);
        let out = kiln().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("wrote") && stderr.contains("not enabled"), "{stderr}");
        let unit = dir.join("kiln.service");
        let text = std::fs::read_to_string(&unit).unwrap();
        let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_kiln")).unwrap();
        let data_dir = if user { "" } else { " --data-dir /var/lib/kiln" };
        assert!(
            text.contains(&format!(
                "ExecStart={} node --contribute{data_dir} --trust-any-recipe --cpus 1 --label \"site=my basement\"\n",
                exe.display()
            )),
            "{text}"
        );
        for line in [
            "Nice=19",
            "CPUWeight=1",
            "IOWeight=1",
            "NoNewPrivileges=yes",
            "Restart=on-failure",
            "Delegate=pids cpuset",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert_eq!(
            text.contains("DynamicUser=yes") && text.contains("ProtectSystem=strict"),
            !user,
            "{text}"
        );
        // systemd's own check: exit 0 and nothing to say (it only warns,
        // with exit 0, about a setting it does not understand).
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(
            verify.status.success() && said.trim().is_empty(),
            "systemd-analyze verify:\n{said}\n{text}"
        );

        let mut args = vec!["service", "uninstall", "--unit-dir", dir.to_str().unwrap()];
        if user {
            args.push("--user");
        }
        let out = kiln().args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!unit.exists());
    }
    // Flags a node would refuse are refused now, not at the next boot.
    let dir = tmp.path().join("bad");
    let dir = dir.to_str().unwrap();
    for (flags, needle) in [
        (
            vec!["--trust-any-recipe", "--cpus", "none"],
            "not valid for `kiln node --contribute`",
        ),
        (vec!["--bootstrap", "/ip4/192.0.2.1/tcp/1"], "--trust-publisher KEY"),
        (
            vec!["--trust-any-recipe", "--data-dir", "/srv/kiln"],
            "leave out --data-dir",
        ),
    ] {
        let out = kiln()
            .args(["service", "install", "--unit-dir", dir, "--"])
            .args(&flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(needle), "{flags:?}: {stderr}");
    }
    assert!(!Path::new(dir).join("kiln.service").exists());
}
