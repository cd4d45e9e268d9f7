//! `jitgate audit verify` and `jitgate audit pubkey`: the chain and its signed checkpoints,
//! checked offline on the files alone.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use jitgate_audit::{PublicKey, Report};

/// The data_dir and audit file gateway.toml names.
fn locations(config: &Path) -> Result<(PathBuf, PathBuf)> {
    let l = crate::serve::report(jitgate_core::config::load(config))
        .context("reading the config to find the audit log (or give the audit files and --pubkey)")?;
    let data = l.config.gateway.data_dir.clone();
    let file = data.join(&l.config.audit.file);
    Ok((data, file))
}

/// `ed25519:...` or a file holding it.
pub(crate) fn parse_key(arg: &str) -> Result<PublicKey> {
    if arg.starts_with(jitgate_audit::checkpoint::KEY_PREFIX) {
        return PublicKey::parse(arg).map_err(|e| anyhow::anyhow!("--pubkey {arg}: {e}"));
    }
    let text = std::fs::read_to_string(arg).with_context(|| {
        format!(
            "--pubkey {arg}: neither a key (`ed25519:...`, as `jitgate audit pubkey` prints it) nor a readable file"
        )
    })?;
    PublicKey::parse(&text).map_err(|e| anyhow::anyhow!("--pubkey {arg}: {e}"))
}

/// `jitgate audit pubkey`.
pub fn pubkey(config: &Path) -> Result<ExitCode> {
    let (data, _) = locations(config)?;
    let dir = data.join("audit");
    let path = dir.join(jitgate_audit::checkpoint::PUB_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let k = PublicKey::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            println!("{k}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} does not exist: the gateway makes its checkpoint key in {} when it first starts (`jitgate serve`)",
            path.display(),
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// What an incomplete proof may still pass with (FILES mode), and the output form.
pub struct Accept {
    /// Print JSON.
    pub json: bool,
    /// Events after the last checkpoint.
    pub unsigned_tail: bool,
    /// Files that do not start at the log's first line.
    pub segment: bool,
}

/// Exit status when the chain is intact but the signatures do not cover what an auditor needs.
const INCOMPLETE: u8 = 3;

/// `jitgate audit verify`.
pub fn run(
    mut files: Vec<PathBuf>,
    file: Option<PathBuf>,
    pubkeys: &[String],
    accept: &Accept,
    config: &Path,
) -> Result<ExitCode> {
    let json = accept.json;
    // The auditor's mode: files given, checked as a copy. Without them: the live log.
    let copy = !files.is_empty() || file.is_some();
    files.extend(file);
    let mut keys = pubkeys.iter().map(|k| parse_key(k)).collect::<Result<Vec<_>>>()?;
    let mut key_note = None;
    if files.is_empty() {
        let (data, path) = locations(config)?;
        files = jitgate_audit::rotated_files(&path);
        files.push(path);
        if keys.is_empty() {
            // The gateway's own copy of its key: fine for an operator's check, not independent
            // of whoever can write data_dir.
            let pub_path = data.join("audit").join(jitgate_audit::checkpoint::PUB_FILE);
            if let Ok(text) = std::fs::read_to_string(&pub_path)
                && let Ok(k) = PublicKey::parse(&text)
            {
                keys.push(k);
                key_note = Some(format!(
                    "signatures checked with the key in {} (for an independent check, pass the key you hold: --pubkey)",
                    pub_path.display()
                ));
            }
        }
    }
    let report = match jitgate_audit::verify_signed(&files, &keys) {
        Ok(r) => r,
        Err((f, b)) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "file": f, "line": b.line, "error": b.why})
                );
            } else {
                eprintln!("{}:{}: {}", f.display(), b.line, b.why);
                eprintln!(
                    "error: the audit log has been altered or damaged at {} line {}",
                    f.display(),
                    b.line
                );
            }
            return Ok(ExitCode::from(1));
        }
    };
    // With a key, a log that holds no checkpoint proves nothing: refuse it.
    let unsigned_only = report.signatures_checked && report.checkpoints == 0 && report.lines > 0;
    let incomplete = if report.signatures_checked {
        incomplete(&report, copy, accept)
    } else {
        Vec::new()
    };
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["ok"] = (!unsigned_only && incomplete.is_empty()).into();
        v["incomplete"] = incomplete.clone().into();
        println!("{v}");
    } else {
        print_report(&report, &keys, key_note.as_deref());
        if unsigned_only {
            eprintln!(
                "error: no checkpoint signed by the given key in these files: nothing in them is proven to be the gateway's"
            );
        }
        for why in &incomplete {
            eprintln!("error: {why}");
        }
    }
    if unsigned_only {
        return Ok(ExitCode::from(1));
    }
    if !incomplete.is_empty() {
        return Ok(ExitCode::from(INCOMPLETE));
    }
    Ok(ExitCode::SUCCESS)
}

/// Why an intact, signed chain still does not prove what an auditor needs (exit status 3).
fn incomplete(r: &Report, copy: bool, accept: &Accept) -> Vec<String> {
    let mut why = Vec::new();
    if r.lines == 0 {
        why.push("the files hold no events".to_string());
    }
    for [a, b] in &r.gaps {
        why.push(format!(
            "seq {a}..{b} is signed by no checkpoint: an earlier run stopped before signing it (a crash or a kill), and it could have been edited while the gateway was down"
        ));
    }
    if copy && r.unsigned_tail > 0 && !accept.unsigned_tail {
        why.push(format!(
            "{} event(s) after the last checkpoint are not signed (pass --allow-unsigned-tail for a copy of a live log)",
            r.unsigned_tail
        ));
    }
    if copy && r.lines > 0 && !r.from_genesis && !accept.segment {
        why.push(format!(
            "the files start at seq {}, not at the log's first line (pass --segment for an excerpt)",
            r.first_seq
        ));
    }
    why
}

fn print_report(r: &Report, keys: &[PublicKey], key_note: Option<&str>) {
    let names: Vec<String> = r.files.iter().map(|f| f.display().to_string()).collect();
    let from = if r.from_genesis {
        String::new()
    } else if r.lines > 0 {
        format!(
            "; starts at seq {} (earlier lines are not in these files: a segment)",
            r.first_seq
        )
    } else {
        String::new()
    };
    println!(
        "{}: ok, {} events in {} file(s) (seq {}..{}), chain intact (head {}){from}",
        names.join(", "),
        r.lines,
        r.files.len(),
        r.first_seq,
        r.last_seq,
        r.head.get(..16).unwrap_or(&r.head)
    );
    if let Some(n) = key_note {
        println!("{n}");
    }
    match (&r.last_signed, r.signatures_checked) {
        (Some(s), true) => {
            let key = keys.iter().find(|k| k.id() == s.key_id);
            println!(
                "signatures: {} checkpoint(s) verified{}; last signed position: seq {} at {} ({} line {})",
                r.checkpoints,
                key.map(|k| format!(" with {k}")).unwrap_or_default(),
                s.covers_seq,
                s.time,
                s.file.display(),
                s.line
            );
        }
        (Some(s), false) => println!(
            "signatures: {} checkpoint(s) NOT checked: a chain check only, not proof of origin (give --pubkey); the last claims seq {} at {}",
            r.checkpoints, s.covers_seq, s.time
        ),
        (None, _) => println!("signatures: no checkpoint in these files"),
    }
    if r.unsigned_tail > 0 && r.last_signed.is_some() {
        println!(
            "warning: {} event(s) after the last checkpoint (seq {}..{}) are not signed: nothing shows whether lines after them were removed; compare with your checkpoint witness",
            r.unsigned_tail,
            (r.last_seq + 1).saturating_sub(r.unsigned_tail),
            r.last_seq
        );
    }
}
