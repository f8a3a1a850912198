//! `lgsp-gateway journal`: the operator's commands over the message journal the config names — verify the hash
//! chains and everything derived from them, rebuild the derived tables, export records as JSON lines, apply
//! migrations, back up, and the monthly report per hop, agency and message type. Every command but `migrate` and
//! `rebuild-index` opens the journal for reading only, so it never touches what a running gateway holds.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lgsp_journal::time::{month_bounds, parse_time, rfc3339};
use lgsp_journal::{ApprovalReport, Journal, JournalError, ReportRow, Verified};

pub enum Ask {
    Verify,
    RebuildIndex,
    Export {
        from: Option<String>,
        to: Option<String>,
        out: Option<PathBuf>,
        /// Sign the export with this key (an XML document instead of JSON lines).
        signer: Option<super::sign::KeyFiles>,
    },
    Migrate,
    Backup {
        file: PathBuf,
    },
    Report {
        month: String,
        json: bool,
        /// End to end: the hops' receipt route to ask the far end through.
        receipts: Option<String>,
    },
}

pub fn journal(config: Option<&Path>, url: Option<String>, ask: Ask) -> ExitCode {
    let cfg = match super::load(config) {
        Ok(c) => c,
        Err(e) => return super::failed(e),
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(e) => return super::failed(e),
    };
    let url = url.unwrap_or_else(|| cfg.journal.url.clone());
    if let Ask::Backup { file } = &ask {
        return backup(&runtime, &url, file);
    }
    runtime.block_on(async move {
        if let Ask::Migrate = ask {
            return match lgsp_journal::migrate(&url).await {
                Ok(v) if v.is_empty() => {
                    println!("{url}: up to date");
                    ExitCode::SUCCESS
                }
                Ok(v) => {
                    let v: Vec<String> = v.iter().map(i64::to_string).collect();
                    println!("{url}: applied migrations {}", v.join(", "));
                    ExitCode::SUCCESS
                }
                Err(e) => super::failed(e),
            };
        }
        if let Ask::RebuildIndex = ask {
            return rebuild(&url, &cfg).await;
        }
        let journal = match Journal::open_reader(&url).await {
            Ok(j) => j,
            Err(e) => return super::failed(e),
        };
        match ask {
            Ask::Migrate | Ask::Backup { .. } | Ask::RebuildIndex => ExitCode::SUCCESS,
            Ask::Verify => match journal.verify().await {
                Ok(v) => {
                    println!("{url}: {}", verified(&v));
                    if let Some(note) = lgsp_journal::redo_note(&url) {
                        println!("note: {note}");
                    }
                    ExitCode::SUCCESS
                }
                Err(JournalError::Broken(b)) => {
                    println!("{url}: BROKEN: {b}");
                    ExitCode::FAILURE
                }
                Err(e) => super::failed(e),
            },
            Ask::Export {
                from,
                to,
                out,
                signer,
            } => export(&journal, from, to, out.as_deref(), signer.as_ref()).await,
            Ask::Report {
                month,
                json,
                receipts,
            } => {
                let code = report(&journal, &month, json).await;
                match receipts {
                    Some(route) if code == ExitCode::SUCCESS => {
                        end_to_end(&journal, &cfg, &month, &route, json).await
                    }
                    _ => code,
                }
            }
        }
    })
}

/// What a whole journal verified, in a line.
fn verified(v: &Verified) -> String {
    let chains: Vec<String> = v.chains.iter().map(|(c, n)| format!("{c} ({n})")).collect();
    format!(
        "{} records in {} chain(s) [{}], {} anchors, {} messages, {} outbox rows, {} bodies: the chains are whole and everything derived from them agrees",
        v.records,
        v.chains.len(),
        chains.join(", "),
        v.anchors,
        v.messages,
        v.outbox,
        v.bodies
    )
}

/// `journal rebuild-index`: the derived tables written anew from the chains, by a writer of this command's own —
/// refused while a gateway writes the journal (its chain committed in the last minute), then verified.
async fn rebuild(url: &str, cfg: &lgsp_config::Config) -> ExitCode {
    let reader = match Journal::open_reader(url).await {
        Ok(j) => j,
        Err(e) => return super::failed(e),
    };
    match reader
        .writers_within(std::time::Duration::from_secs(10))
        .await
    {
        Ok(alive) if !alive.is_empty() => {
            return super::failed(format!(
                "{url}: a gateway is writing this journal (chain {} committed in the last 10 s); stop every gateway on it first",
                alive.join(", ")
            ));
        }
        Ok(_) => {}
        Err(e) => return super::failed(e),
    }
    let mut settings = lgsp_proxy::journal_settings(cfg);
    settings.url = url.to_owned();
    let journal = match Journal::open(settings).await {
        Ok(j) => j,
        Err(e) => return super::failed(e),
    };
    match journal.rebuild_index().await {
        Ok(r) => println!(
            "{url}: rebuilt from the chains: {} messages, {} record rows set again, outbox {} removed and {} added",
            r.messages, r.records, r.outbox_removed, r.outbox_added
        ),
        Err(e) => return super::failed(e),
    }
    let verdict = journal.verify().await;
    if let Err(e) = journal.release().await {
        return super::failed(e);
    }
    match verdict {
        Ok(v) => {
            println!("{url}: {}", verified(&v));
            ExitCode::SUCCESS
        }
        Err(e) => super::failed(e),
    }
}

/// `journal backup FILE`: the online copy, then its chain walked as `verify` walks the journal's.
fn backup(runtime: &tokio::runtime::Runtime, url: &str, file: &Path) -> ExitCode {
    let pages = match lgsp_journal::backup_sqlite(url, file) {
        Ok(p) => p,
        Err(e) => return super::failed(e),
    };
    let copy = format!("sqlite://{}", file.display());
    let checked = runtime.block_on(async {
        let journal = Journal::open_reader(&copy).await?;
        journal.verify().await
    });
    match checked {
        Ok(v) => {
            println!(
                "{url}: copied {pages} pages to {}; the copy holds {} records, its chains whole (check again: lgsp-gateway journal --url {copy} verify)",
                file.display(),
                v.records
            );
            ExitCode::SUCCESS
        }
        Err(e) => super::failed(format!(
            "the copy at {} does not verify: {e}",
            file.display()
        )),
    }
}

fn time_or(v: Option<&str>, default: i64, what: &str) -> Result<i64, String> {
    v.map_or(Ok(default), |v| {
        parse_time(v).map_err(|e| format!("--{what}: {e}"))
    })
}

async fn export(
    journal: &Journal,
    from: Option<String>,
    to: Option<String>,
    out: Option<&Path>,
    signer: Option<&super::sign::KeyFiles>,
) -> ExitCode {
    let (from_us, to_us) = match (
        time_or(from.as_deref(), 0, "from"),
        time_or(to.as_deref(), i64::MAX, "to"),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return super::failed(e),
    };
    let mut sink: Box<dyn Write> = match out {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => return super::failed(format!("{}: {e}", p.display())),
        },
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    if let Some(signer) = signer {
        return signed_export(journal, signer, (from_us, to_us), sink).await;
    }
    match journal.export(from_us, to_us, &mut sink).await {
        Ok(n) => {
            if let Err(e) = sink.flush() {
                return super::failed(format!("writing the export: {e}"));
            }
            eprintln!("exported {n} records");
            ExitCode::SUCCESS
        }
        Err(e) => super::failed(e),
    }
}

/// The records of `[from_us, to_us)` as `<XuatNhatKy>`, signed by the operator's key as it streams.
async fn signed_export(
    journal: &Journal,
    signer: &super::sign::KeyFiles,
    (from_us, to_us): (i64, i64),
    sink: Box<dyn Write>,
) -> ExitCode {
    let key = match signer.load() {
        Ok(k) => k,
        Err(e) => return super::failed(e),
    };
    let period = |us: i64| {
        if us == i64::MAX {
            rfc3339(lgsp_journal::now_us())
        } else {
            rfc3339(us)
        }
    };
    let mut writer = match lgsp_sign::export::SignedExport::start(
        sink,
        &key,
        &period(from_us),
        &period(to_us),
    ) {
        Ok(w) => w,
        Err(e) => return super::failed(format!("writing the export: {e}")),
    };
    let written = journal
        .each_record(from_us, to_us, &mut |r| {
            writer.record(r.chain, r.seq, r.prev_hash, r.hash, r.content)
        })
        .await;
    if let Err(e) = written {
        return super::failed(e);
    }
    match writer.finish() {
        Ok(n) => {
            eprintln!("exported {n} records, signed");
            ExitCode::SUCCESS
        }
        Err(e) => super::failed(e),
    }
}

async fn report(journal: &Journal, month: &str, json: bool) -> ExitCode {
    let (from, to) = match month_bounds(month) {
        Ok(b) => b,
        Err(e) => return super::failed(e),
    };
    let rows = match journal.report(from, to).await {
        Ok(r) => r,
        Err(e) => return super::failed(e),
    };
    let approvals = match journal.approval_report(month, from, to).await {
        Ok(r) => r,
        Err(e) => return super::failed(e),
    };
    let mut out = std::io::stdout().lock();
    let _ = if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "month": month, "rows": rows, "approvals": approvals })
        )
    } else {
        write_table(&mut out, month, &rows)
            .and_then(|()| write_approvals(&mut out, month, &approvals))
    };
    ExitCode::SUCCESS
}

/// At most this many unapproved profiles are listed per agency (`--json` lists them all).
const UNAPPROVED_SHOWN: usize = 20;

/// Every message the journal says was delivered in `month`, asked of the far end through each hop's `receipts`
/// route (as the hop: `lgsp_proxy::confirm`), 16 at a time; exit 1 when one is missing there or cannot be checked.
async fn end_to_end(
    journal: &Journal,
    cfg: &lgsp_config::Config,
    month: &str,
    receipts: &str,
    json: bool,
) -> ExitCode {
    use lgsp_proxy::confirm::{AtFarEnd, at_far_end};
    let (from, to) = match month_bounds(month) {
        Ok(b) => b,
        Err(e) => return super::failed(e),
    };
    let metrics = match lgsp_metrics::Metrics::new() {
        Ok(m) => m,
        Err(e) => return super::failed(e),
    };
    let prepared = match lgsp_proxy::prepare(cfg, &metrics, None, None) {
        Ok(p) => p,
        Err(e) => return super::failed(e),
    };
    let mut report = Vec::new();
    let mut ok = true;
    for hop in prepared.hops {
        let target = std::sync::Arc::new(hop.delivery);
        let Some(lookup) = target.routes.named(receipts).cloned() else {
            continue;
        };
        let (mut delivered, mut held) = (0u64, 0u64);
        let mut missing: Vec<String> = Vec::new();
        let mut unknown: Vec<String> = Vec::new();
        let mut after = None;
        loop {
            let page = match journal
                .ended(
                    &hop.name,
                    lgsp_journal::Status::Delivered,
                    (from, to),
                    after.clone(),
                    256,
                )
                .await
            {
                Ok(p) => p,
                Err(e) => return super::failed(e),
            };
            let Some(last) = page.last() else { break };
            after = Some((last.accepted_us, last.message_id.clone()));
            let mut asked = tokio::task::JoinSet::new();
            for m in page {
                if asked.len() >= 16
                    && let Some(Ok((m, at))) = asked.join_next().await
                {
                    tally(m, at, (&mut held, &mut missing, &mut unknown));
                }
                delivered += 1;
                let (target, lookup) = (target.clone(), lookup.clone());
                asked.spawn(async move {
                    let at = at_far_end(&target, &lookup, &m).await;
                    (m, at)
                });
            }
            while let Some(Ok((m, at))) = asked.join_next().await {
                tally(m, at, (&mut held, &mut missing, &mut unknown));
            }
        }
        fn tally(
            m: lgsp_journal::Message,
            at: AtFarEnd,
            (held, missing, unknown): (&mut u64, &mut Vec<String>, &mut Vec<String>),
        ) {
            match at {
                AtFarEnd::Held => *held += 1,
                AtFarEnd::Missing => missing.push(format!("{} ({})", m.message_id, m.agency)),
                AtFarEnd::Unknown(why) => unknown.push(format!("{}: {why}", m.message_id)),
            }
        }
        ok &= missing.is_empty() && unknown.is_empty();
        report.push(serde_json::json!({
            "hop": hop.name, "through": receipts, "delivered": delivered, "held": held,
            "missing": missing, "unknown": unknown,
        }));
    }
    let mut out = std::io::stdout().lock();
    let _ = if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "month": month, "end_to_end": report, "ok": ok })
        )
    } else {
        let mut r = writeln!(
            out,
            "\nend to end ({month}, asked of the far end through {receipts}):"
        );
        for h in &report {
            r = r.and_then(|()| {
                writeln!(
                    out,
                    "{:<6} {} delivered, {} held at the far end, {} missing, {} not checked",
                    h["hop"].as_str().unwrap_or_default(),
                    h["delivered"],
                    h["held"],
                    h["missing"].as_array().map_or(0, Vec::len),
                    h["unknown"].as_array().map_or(0, Vec::len)
                )
            });
            for line in h["missing"].as_array().into_iter().flatten().take(50) {
                r = r.and_then(|()| {
                    writeln!(out, "  missing: {}", line.as_str().unwrap_or_default())
                });
            }
            for line in h["unknown"].as_array().into_iter().flatten().take(20) {
                r = r.and_then(|()| {
                    writeln!(out, "  not checked: {}", line.as_str().unwrap_or_default())
                });
            }
        }
        r
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Per hop and agency: whether the month is approved, by whom, and the profiles no approval covers.
fn write_approvals(
    out: &mut impl Write,
    month: &str,
    report: &[ApprovalReport],
) -> std::io::Result<()> {
    writeln!(
        out,
        "\napprovals of {month} (PheDuyetDuLieu, Thông tư 06/2023):"
    )?;
    if report.is_empty() {
        return writeln!(out, "  none, and no profile of the month waits for one");
    }
    for r in report {
        if r.approvals.is_empty() {
            writeln!(out, "{:<6} {:<16} NOT approved", r.hop, r.agency)?;
        }
        for a in &r.approvals {
            let v = &a.approval;
            writeln!(
                out,
                "{:<6} {:<16} approved at {} by {} and {} (message {}), {} profiles",
                r.hop,
                r.agency,
                v["approved_at"].as_str().unwrap_or_default(),
                v["person"]["subject"].as_str().unwrap_or_default(),
                v["agency"]["uris"][0].as_str().unwrap_or_default(),
                a.message_id,
                v["profiles"].as_array().map_or(0, Vec::len)
            )?;
        }
        writeln!(
            out,
            "{:<6} {:<16} {} profile(s) of the month unapproved",
            "",
            "",
            r.unapproved.len()
        )?;
        for p in r.unapproved.iter().take(UNAPPROVED_SHOWN) {
            writeln!(
                out,
                "{:<6} {:<16}   SoCCCD {} sha256 {} (message {}, {})",
                "",
                "",
                p.subject,
                p.sha256,
                p.message_id,
                rfc3339(p.accepted_us)
            )?;
        }
        if r.unapproved.len() > UNAPPROVED_SHOWN {
            writeln!(
                out,
                "{:<6} {:<16}   … and {} more (--json lists all)",
                "",
                "",
                r.unapproved.len() - UNAPPROVED_SHOWN
            )?;
        }
    }
    Ok(())
}

fn write_table(out: &mut impl Write, month: &str, rows: &[ReportRow]) -> std::io::Result<()> {
    writeln!(out, "month {month} (UTC+07:00)")?;
    writeln!(
        out,
        "{:<6} {:<16} {:<16} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "hop", "agency", "message_type", "received", "delivered", "rejected", "pending", "failed"
    )?;
    let mut total = ReportRow::default();
    for r in rows {
        writeln!(
            out,
            "{:<6} {:<16} {:<16} {:>9} {:>9} {:>9} {:>9} {:>9}",
            r.hop,
            r.agency,
            r.message_type,
            r.received,
            r.delivered,
            r.rejected,
            r.pending,
            r.failed
        )?;
        total.received += r.received;
        total.delivered += r.delivered;
        total.rejected += r.rejected;
        total.pending += r.pending;
        total.failed += r.failed;
    }
    writeln!(
        out,
        "{:<6} {:<16} {:<16} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "all", "", "", total.received, total.delivered, total.rejected, total.pending, total.failed
    )
}
