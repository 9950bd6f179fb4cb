//! `kiln contributions`: what this machine gave, asked of the node running
//! on the data dir, or read from the data dir when none runs; and
//! `--verify FILE`, the check of a proof anyone can run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kiln_node::contributions::{cpu_time, read_proof, rows, summarize_to_file, Summary};
use kiln_node::control::{self, ControlReply, ControlRequest};
use kiln_protocol::contrib::WINDOW_DAYS;
use kiln_protocol::system::{format_bytes, format_duration_secs};

pub async fn show(data_dir: &Path, json: bool, proof: Option<PathBuf>) -> anyhow::Result<()> {
    let summary = match control::ask(data_dir, &ControlRequest::Contributions).await? {
        Some(ControlReply::Contributions(summary)) => *summary,
        Some(ControlReply::Error { message }) => bail!("{message}"),
        Some(_) => bail!(
            "the node on {} answered something else than its contributions; is it the same kiln version as this command?",
            data_dir.display()
        ),
        None => {
            if !data_dir.join("node.key").exists() && !data_dir.join("index.redb").exists() {
                bail!(
                    "no node has run on {}, so it gave nothing yet; pass the --data-dir of the worker to ask",
                    data_dir.display()
                );
            }
            let store = kiln_store::Store::open(data_dir)?;
            let key = kiln_node::identity::load_or_create(data_dir)?;
            summarize_to_file(&store, &key, kiln_node::clock::now_ms()).map_err(anyhow::Error::msg)?
        }
    };
    if let (Some(target), Some(written)) = (&proof, &summary.proof_file) {
        std::fs::copy(written, target).with_context(|| format!("cannot write the proof to {}", target.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    print_summary(&summary);
    match (&proof, &summary.proof_file) {
        (Some(target), _) => println!(
            "\nproof written to {}: anyone can check it with `kiln contributions --verify {}`",
            target.display(),
            target.display()
        ),
        (None, Some(written)) => println!(
            "\nproof (the signed statement and every attestation behind it): {written}\ncheck it with `kiln contributions --verify {written}`"
        ),
        (None, None) => {}
    }
    Ok(())
}

fn print_summary(summary: &Summary) {
    println!("worker {} (key {})", summary.peer, summary.worker);
    println!();
    println!(
        "{:<28}{:>18}{:>18}",
        "",
        "all time",
        format!("last {} days", summary.window_days)
    );
    for (name, all_time, recent) in rows(summary) {
        println!("{name:<28}{all_time:>18}{recent:>18}");
    }
    if !summary.builds.is_empty() {
        println!("\nnewest builds:");
        for b in &summary.builds {
            let mut line = format!(
                "  {}  {:<24} {:<9} {}",
                &b.build_key[..16.min(b.build_key.len())],
                b.recipe,
                b.ended,
                format_duration_secs(b.build_ms / 1000)
            );
            if b.paused_ms > 0 {
                line.push_str(&format!(" (paused {})", format_duration_secs(b.paused_ms / 1000)));
            }
            if let Some(reason) = &b.reason {
                line.push_str(&format!(": {reason}"));
            }
            println!("{line}");
        }
    }
    println!("\nsigned statement (hex): {}", summary.statement_hex);
}

/// Checks a proof file and says what it shows.
pub fn verify(path: &Path, json: bool) -> anyhow::Result<()> {
    let proof = read_proof(path).map_err(anyhow::Error::msg)?;
    let checked = proof
        .check()
        .map_err(|e| anyhow::anyhow!("{} does not hold: {e}", path.display()))?;
    let s = &checked.statement;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "verified": true,
                "worker": s.worker.to_string(),
                "made_at_ms": s.made_at_ms,
                "builds_done": checked.builds_done,
                "attested_ms": checked.attested_ms,
                "recent_builds_done": checked.recent_builds_done,
                "recent_attested_ms": checked.recent_attested_ms,
                "window_days": WINDOW_DAYS,
                "claimed": { "all_time": s.all_time, "recent": s.recent },
            }))?
        );
        return Ok(());
    }
    println!("verified: a statement signed by worker {}", s.worker);
    println!(
        "  {} builds done, {} of build time, each attested by the worker's own signature when it ended ({} and {} in the last {WINDOW_DAYS} days)",
        checked.builds_done,
        format_duration_secs(checked.attested_ms / 1000),
        checked.recent_builds_done,
        format_duration_secs(checked.recent_attested_ms / 1000)
    );
    println!(
        "  the worker's own signed claim, not checkable from the proof: {} failed, {} given to others, CPU time {}, {} served",
        s.all_time.builds_failed,
        s.all_time.builds_abandoned,
        cpu_time(&s.all_time),
        format_bytes(s.all_time.served_bytes)
    );
    Ok(())
}
