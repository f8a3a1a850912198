//! `lgsp-gateway journal`: the operator's commands over the message journal the config names — verify the hash
//! chain, export records as JSON lines, apply migrations, and the monthly report per hop, agency and message type.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lgsp_journal::{ApprovalReport, Journal, JournalError, ReportRow, Settings};
use lgsp_proxy::messages::parse_time;

pub enum Ask {
    Verify,
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
        return backup(&runtime, &url, file, &cfg);
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
        let journal = match Journal::open(Settings {
            url: url.clone(),
            keep_bodies: cfg.journal.keep_bodies,
            retention: cfg.journal.retention,
        })
        .await
        {
            Ok(j) => j,
            Err(e) => return super::failed(e),
        };
        match ask {
            Ask::Migrate | Ask::Backup { .. } => ExitCode::SUCCESS,
            Ask::Verify => match journal.verify().await {
                Ok(n) => {
                    println!("{url}: {n} records, the chain is whole");
                    ExitCode::SUCCESS
                }
                Err(JournalError::Broken(b)) => {
                    println!("{url}: BROKEN at {b}");
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
            Ask::Report { month, json } => report(&journal, &month, json).await,
        }
    })
}

/// `journal backup FILE`: the online copy, then its chain walked as `verify` walks the journal's.
fn backup(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    file: &Path,
    cfg: &lgsp_config::Config,
) -> ExitCode {
    let pages = match lgsp_journal::backup_sqlite(url, file) {
        Ok(p) => p,
        Err(e) => return super::failed(e),
    };
    let copy = format!("sqlite://{}", file.display());
    let checked = runtime.block_on(async {
        let journal = Journal::open(Settings {
            url: copy.clone(),
            keep_bodies: cfg.journal.keep_bodies,
            retention: cfg.journal.retention,
        })
        .await?;
        journal.verify().await
    });
    match checked {
        Ok(n) => {
            println!(
                "{url}: copied {pages} pages to {}; the copy holds {n} records, its chain whole (check again: lgsp-gateway journal --url {copy} verify)",
                file.display()
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
            lgsp_proxy::messages::rfc3339(lgsp_journal::now_us())
        } else {
            lgsp_proxy::messages::rfc3339(us)
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
        .each_record(from_us, to_us, &mut |seq, prev, hash, content| {
            writer.record(seq, prev, hash, content)
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

/// `YYYY-MM` → the month's start and the next month's, in Vietnam time.
fn month_bounds(month: &str) -> Result<(i64, i64), String> {
    let bad = || format!("--month {month}: write the month as YYYY-MM, e.g. 2026-11");
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    let (y, m): (u16, u8) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(1..=12).contains(&m) || month.len() != 7 {
        return Err(bad());
    }
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let start = parse_time(&format!("{y:04}-{m:02}-01")).map_err(|_| bad())?;
    let end = parse_time(&format!("{ny:04}-{nm:02}-01")).map_err(|_| bad())?;
    Ok((start, end))
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
                lgsp_proxy::messages::rfc3339(p.accepted_us)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_runs_from_its_first_midnight_in_vietnam_to_the_next() {
        let (from, to) = month_bounds("2026-12").unwrap();
        assert_eq!(lgsp_proxy::messages::rfc3339(from), "2026-11-30T17:00:00Z");
        assert_eq!(lgsp_proxy::messages::rfc3339(to), "2026-12-31T17:00:00Z");
        for bad in ["2026-13", "2026-1", "11-2026", "2026"] {
            assert!(month_bounds(bad).is_err(), "{bad}");
        }
    }
}
