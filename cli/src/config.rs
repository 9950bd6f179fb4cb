//! The config file: defaults for any flag of any command, in TOML.
//!
//! The file is `KILN_CONFIG`, or `config.toml` in the platform's config
//! dir (`~/.config/kiln/config.toml` on Linux). Top-level keys apply to
//! every command that has that flag; a table named after a command
//! (`[node]`, `[request]`, `[recipe.options]`...) applies to that command.
//! A key is a flag's long name without the dashes; its value is a string,
//! number, boolean (a switch: `true` turns it on) or array (a repeatable
//! flag). A flag given on the command line (or through its environment
//! variable) wins over the file.
//!
//! ```toml
//! bootstrap = ["/ip4/192.0.2.1/tcp/4001/p2p/12D3KooW..."]
//! [node]
//! contribute = true
//! trust-publisher = ["ab12..."]
//! max-jobs = 2
//! ```
//!
//! It works by turning the file's settings into arguments placed after the
//! command's name, so clap checks them exactly as it checks typed ones.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::CommandFactory;

/// The config file to read, if there is one.
pub fn path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KILN_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let default = directories::ProjectDirs::from("org", "kiln", "kiln")?
        .config_dir()
        .join("config.toml");
    default.exists().then_some(default)
}

/// `args` (the whole command line) with the file's settings added.
pub fn apply<C: CommandFactory>(args: Vec<OsString>, file: &Path) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the config file {} (KILN_CONFIG)", file.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("the config file {} is not valid TOML", file.display()))?;
    let root = C::command();
    let (command, names, position) = command_path(&root, &args);
    if names.is_empty() {
        return Ok(args);
    }
    check_keys(&root, &table, file)?;
    let mut added = Vec::new();
    for (key, value, general) in settings(&table, &names) {
        let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(key.as_str())) else {
            // Top-level keys apply only where the flag exists.
            if general {
                continue;
            }
            bail!(
                "the config file {} sets {key:?} for `kiln {}`, which has no --{key} flag; `kiln {} --help` lists them",
                file.display(),
                names.join(" "),
                names.join(" ")
            );
        };
        if given(arg, &args, &key) {
            continue;
        }
        added.extend(as_arguments(file, &key, value)?);
    }
    let mut out = args;
    out.splice(position..position, added);
    Ok(out)
}

/// The command `args` run: the command itself, the words naming it
/// (`["recipe", "options"]`), and where its own arguments begin.
fn command_path<'a>(root: &'a clap::Command, args: &[OsString]) -> (&'a clap::Command, Vec<String>, usize) {
    let mut command = root;
    let mut names = Vec::new();
    let mut position = 1;
    let mut i = 0;
    while i + 1 < args.len() {
        i += 1;
        let Some(word) = args[i].to_str() else { break };
        if let Some(long) = word.strip_prefix("--").filter(|l| !l.contains('=')) {
            // A global option's value is not a command name.
            let takes_value = command
                .get_arguments()
                .any(|a| a.get_long() == Some(long) && a.get_action().takes_values());
            if takes_value {
                i += 1;
            }
            continue;
        }
        if word.starts_with('-') {
            continue;
        }
        match command.find_subcommand(word) {
            Some(sub) => {
                command = sub;
                names.push(word.to_string());
                position = i + 1;
            }
            None => break,
        }
    }
    (command, names, position)
}

/// Every table names a command and every top-level key a flag of some
/// command: a misspelling is an error, not a setting quietly ignored.
fn check_keys(root: &clap::Command, table: &toml::Table, file: &Path) -> anyhow::Result<()> {
    for (key, value) in table {
        if value.is_table() && root.find_subcommand(key).is_none() {
            bail!(
                "the config file {} has a [{key}] table, but kiln has no `{key}` command",
                file.display()
            );
        }
        if !value.is_table() && !any_command_has(root, key) {
            bail!(
                "the config file {} sets {key:?}, which is no flag of any kiln command (a misspelling?); `kiln help COMMAND` lists the flags",
                file.display()
            );
        }
    }
    Ok(())
}

/// The settings for the command `names` run: top-level ones (marked
/// general), then each table along the command path, the more specific
/// winning.
fn settings(table: &toml::Table, names: &[String]) -> Vec<(String, toml::Value, bool)> {
    let mut settings: Vec<(String, toml::Value, bool)> = Vec::new();
    let mut scope = Some(table);
    for depth in 0..=names.len() {
        if depth > 0 {
            scope = scope
                .and_then(|t| t.get(&names[depth - 1]))
                .and_then(toml::Value::as_table);
        }
        let Some(current) = scope else { break };
        for (key, value) in current.iter().filter(|(_, v)| !v.is_table()) {
            settings.retain(|(k, _, _)| k != key);
            settings.push((key.clone(), value.clone(), depth == 0));
        }
    }
    settings
}

/// Whether `--key` was typed or set through its environment variable:
/// then the file does not set it.
fn given(arg: &clap::Arg, args: &[OsString], key: &str) -> bool {
    let flag = format!("--{key}");
    let typed = args.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
    });
    let from_env = arg
        .get_env()
        .is_some_and(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    typed || from_env
}

/// A setting as the arguments that would have set it.
fn as_arguments(file: &Path, key: &str, value: toml::Value) -> anyhow::Result<Vec<OsString>> {
    let flag = OsString::from(format!("--{key}"));
    Ok(match value {
        toml::Value::Boolean(true) => vec![flag],
        toml::Value::Boolean(false) => Vec::new(),
        toml::Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                out.push(flag.clone());
                out.push(OsString::from(scalar(file, key, &item)?));
            }
            out
        }
        other => vec![flag, OsString::from(scalar(file, key, &other)?)],
    })
}

/// Whether `command` or any command under it has the flag `--long`.
fn any_command_has(command: &clap::Command, long: &str) -> bool {
    command.get_arguments().any(|a| a.get_long() == Some(long))
        || command.get_subcommands().any(|sub| any_command_has(sub, long))
}

fn scalar(file: &Path, key: &str, value: &toml::Value) -> anyhow::Result<String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(n) => Ok(n.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => bail!(
            "the config file {} sets {key:?} to {value}; use a string, number, boolean or a list of them",
            file.display()
        ),
    }
}
