//! `kiln service install|uninstall`: a systemd unit that runs
//! `kiln node --contribute` from boot (or from login, with `--user`), at the
//! lowest priority and hardened, with the node flags the contributor gave.
//!
//! The unit is written as text here and checked by the tests with
//! `systemd-analyze verify`. Hardening stops where bubblewrap would stop
//! working: the sandbox mounts a fresh `/proc` in the build's namespaces,
//! which the kernel refuses when `/proc` has mounts over it, so the unit
//! sets no `ProtectProc=`, `ProtectKernelTunables=` or
//! `ProtectControlGroups=`, and no `RestrictNamespaces=` or
//! `SystemCallFilter=` (bubblewrap needs `unshare`, `mount`, `pivot_root`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The unit's file name.
pub const UNIT: &str = "kiln.service";
/// Where a system unit keeps its data: systemd's `StateDirectory=kiln`.
const SYSTEM_DATA_DIR: &str = "/var/lib/kiln";

/// What to install.
pub struct Install {
    /// A unit of the user's own systemd (`--user`), instead of the system's.
    pub user: bool,
    /// Write the unit here instead of systemd's directory, and do not enable it.
    pub unit_dir: Option<PathBuf>,
    /// Flags for `kiln node` (after `--contribute`).
    pub node_args: Vec<String>,
}

/// The directory systemd reads units from, for the system or the user.
fn default_unit_dir(user: bool) -> anyhow::Result<PathBuf> {
    if !user {
        return Ok(PathBuf::from("/etc/systemd/system"));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither XDG_CONFIG_HOME nor HOME is set, so there is no user unit directory; pass --unit-dir DIR")?;
    Ok(config.join("systemd/user"))
}

/// The unit's text. `kiln` is the binary's absolute path.
pub fn unit_text(kiln: &Path, user: bool, node_args: &[String]) -> String {
    let mut exec = vec![kiln.display().to_string(), "node".into(), "--contribute".into()];
    if !user {
        exec.push("--data-dir".into());
        exec.push(SYSTEM_DATA_DIR.into());
    }
    exec.extend(node_args.iter().cloned());
    let exec: Vec<String> = exec.iter().map(|a| quote(a)).collect();
    let mut text = String::from(
        "# Written by `kiln service install`; `kiln service uninstall` removes it.\n\
         [Unit]\n\
         Description=Kiln worker: lends this machine's idle time to a peer-to-peer build farm\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=exec\n",
    );
    text.push_str(&format!("ExecStart={}\n", exec.join(" ")));
    if !user {
        text.push_str(
            "# Its own user, made when it starts; its data in /var/lib/kiln.\n\
             DynamicUser=yes\n\
             StateDirectory=kiln\n\
             ProtectSystem=strict\n\
             ProtectHome=yes\n\
             PrivateTmp=yes\n",
        );
    }
    text.push_str(
        "NoNewPrivileges=yes\n\
         # The owner's work comes first. Builds run at SCHED_IDLE and the idle\n\
         # I/O class (the sandbox sets them); the node itself, which only\n\
         # answers the network, runs at nice 19 and the lowest best-effort\n\
         # I/O priority. The whole unit has the lowest CPU and I/O weight:\n\
         # 1, not idle, so that the node's own 0.3 % of a core still gets\n\
         # through while the owner keeps every core busy (about 1 % of the\n\
         # CPU against one busy group of the default weight 100).\n\
         Nice=19\n\
         IOSchedulingClass=best-effort\n\
         IOSchedulingPriority=7\n\
         CPUWeight=1\n\
         IOWeight=1\n\
         # Lets the node give each build its own pids and cpuset cgroup.\n\
         Delegate=pids cpuset\n\
         Restart=on-failure\n\
         RestartSec=5s\n\
         # SIGTERM to the node first; what is left of its builds is killed\n\
         # when the node ends, or after the timeout.\n\
         KillMode=mixed\n\
         TimeoutStopSec=30s\n\
         \n\
         [Install]\n",
    );
    text.push_str(if user {
        "WantedBy=default.target\n"
    } else {
        "WantedBy=multi-user.target\n"
    });
    text
}

/// One argument as systemd's `ExecStart=` reads it: bare when it is plain,
/// else double-quoted with `\` and `"` escaped; `%` and `$` are doubled
/// (systemd would expand them as specifiers and variables).
fn quote(arg: &str) -> String {
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    let plain = !escaped.is_empty()
        && escaped
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:=@,+-%$".contains(c));
    if plain {
        escaped
    } else {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Writes the unit and, unless `--unit-dir` was given, enables and starts
/// it. Returns what was done, in words.
pub fn install(options: &Install) -> anyhow::Result<String> {
    let kiln = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("cannot tell where this kiln binary is")?;
    if !options.user && (kiln.starts_with("/home") || kiln.starts_with("/root")) {
        bail!(
            "this kiln binary is at {}, under a home directory, which a system service cannot read \
             (it runs as its own user, with home directories hidden); copy it first, \
             e.g. `install -m 755 {} /usr/local/bin/kiln`, and run /usr/local/bin/kiln service install, \
             or install a user service with --user",
            kiln.display(),
            kiln.display()
        );
    }
    if !options.user
        && options
            .node_args
            .iter()
            .any(|a| a == "--data-dir" || a.starts_with("--data-dir="))
    {
        bail!("a system service keeps its data in {SYSTEM_DATA_DIR} (systemd's StateDirectory): leave out --data-dir, or install a user service with --user");
    }
    let dir = match &options.unit_dir {
        Some(dir) => dir.clone(),
        None => default_unit_dir(options.user)?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create the unit directory {}", dir.display()))?;
    let path = dir.join(UNIT);
    std::fs::write(&path, unit_text(&kiln, options.user, &options.node_args))
        .with_context(|| format!("cannot write {}", path.display()))?;
    if options.unit_dir.is_some() {
        return Ok(format!(
            "wrote {} (not enabled: it is outside systemd's directory)",
            path.display()
        ));
    }
    systemctl(options.user, &["daemon-reload"])?;
    systemctl(options.user, &["enable", "--now", UNIT])?;
    let scope = if options.user { " --user" } else { "" };
    Ok(format!(
        "wrote {} and started it; it starts at {} from now on. Its log: journalctl{scope} -u kiln; \
         stop it for good: kiln service uninstall{scope}",
        path.display(),
        if options.user { "login" } else { "boot" }
    ))
}

/// Stops and disables the unit, and removes its file.
pub fn uninstall(user: bool, unit_dir: Option<&Path>) -> anyhow::Result<String> {
    let dir = match unit_dir {
        Some(dir) => dir.to_path_buf(),
        None => default_unit_dir(user)?,
    };
    let path = dir.join(UNIT);
    if !path.exists() {
        bail!("there is no {} to remove (nothing was installed there)", path.display());
    }
    if unit_dir.is_none() {
        systemctl(user, &["disable", "--now", UNIT])?;
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    if unit_dir.is_none() {
        systemctl(user, &["daemon-reload"])?;
    }
    Ok(format!("stopped the worker and removed {}", path.display()))
}

fn systemctl(user: bool, args: &[&str]) -> anyhow::Result<()> {
    let mut command = Command::new("systemctl");
    if user {
        command.arg("--user");
    }
    let shown = format!("systemctl{} {}", if user { " --user" } else { "" }, args.join(" "));
    let out = command
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{shown}`: is systemd installed?"))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{shown}` failed ({}). Is systemd running here? The unit file is written: run `{shown}` yourself once it is",
            said.lines().next().unwrap_or("no reason given").trim().trim_end_matches('.')
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_as_systemd_reads_them() {
        assert_eq!(quote("--cpus"), "--cpus");
        assert_eq!(
            quote("/ip4/192.0.2.1/tcp/4001/p2p/12D3KooW"),
            "/ip4/192.0.2.1/tcp/4001/p2p/12D3KooW"
        );
        assert_eq!(quote("site=my basement"), "\"site=my basement\"");
        assert_eq!(quote("100%"), "100%%");
        assert_eq!(quote("$HOME"), "$$HOME");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote(""), "\"\"");
    }

    #[test]
    fn a_system_unit_runs_as_its_own_user_at_idle_priority() {
        let text = unit_text(Path::new("/usr/local/bin/kiln"), false, &["--cpus".into(), "2".into()]);
        assert!(text.contains("ExecStart=/usr/local/bin/kiln node --contribute --data-dir /var/lib/kiln --cpus 2\n"));
        for line in [
            "DynamicUser=yes",
            "CPUWeight=1",
            "Nice=19",
            "ProtectHome=yes",
            "WantedBy=multi-user.target",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        let user = unit_text(Path::new("/usr/local/bin/kiln"), true, &[]);
        assert!(
            !user.contains("DynamicUser") && user.contains("WantedBy=default.target"),
            "{user}"
        );
    }
}
