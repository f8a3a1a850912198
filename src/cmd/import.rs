//! `lgsp-gateway import`: a filled spreadsheet template to packets (`lgsp-import`), every bad cell reported where
//! the clerk sees it; `--send` posts the good packets through the connection settings of `probe`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use lgsp_probe::{Delivery, ProbeOptions, Sender};
use lgsp_schema::{Catalog, Options};

/// What to import.
pub struct Ask<'a> {
    pub file: &'a Path,
    pub message_type: &'a str,
    pub out: &'a Path,
    pub sheet: Option<&'a str>,
    pub schemas: Option<&'a Path>,
    pub json: bool,
    /// Send the good packets with these settings.
    pub send: Option<ProbeOptions>,
}

pub fn import(ask: &Ask<'_>) -> ExitCode {
    let catalog = match ask.schemas.map_or_else(Catalog::embedded, Catalog::load) {
        Ok(c) => c,
        Err(e) => return super::failed(format!("the schemas do not load: {e}")),
    };
    let sheet = match lgsp_import::sheet::read(ask.file, ask.sheet) {
        Ok(s) => s,
        Err(e) => return super::failed(e),
    };
    if let Err(e) = std::fs::create_dir_all(ask.out) {
        return super::failed(format!("{}: {e}", ask.out.display()));
    }
    let options = Options {
        limits: lgsp_schema::Limits {
            max_errors: 1000,
            ..lgsp_schema::Limits::default()
        },
        ..Options::default()
    };
    let run = lgsp_import::Ask {
        message_type: ask.message_type,
        catalog: &catalog,
        out: Some(ask.out),
        options,
    };
    let imported = match lgsp_import::import(&sheet, &run) {
        Ok(i) => i,
        Err(e) => return super::failed(e),
    };
    let sent = match &ask.send {
        Some(opts) => match send(opts, &imported) {
            Ok(sent) => sent,
            Err(e) => return super::failed(e),
        },
        None => Vec::new(),
    };
    report(ask, &imported, &sent);
    let all_good = imported.rows.iter().all(|r| r.is_good());
    let all_sent = sent
        .iter()
        .all(|(_, d)| d.as_ref().is_ok_and(Delivery::accepted));
    if all_good && all_sent {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What became of one sent row: its number, and the gateway's answer or why there was none.
type Sent = (usize, Result<Delivery, String>);

/// Each good row's packet, posted in row order over one connection.
fn send(opts: &ProbeOptions, imported: &lgsp_import::Import) -> Result<Vec<Sent>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async {
        let mut sender = Sender::connect(opts).await?;
        let mut out = Vec::new();
        for row in &imported.rows {
            if let Some(packet) = &row.packet {
                let delivery = sender.send(imported.message_type, packet.clone()).await;
                out.push((row.row, delivery));
            }
        }
        Ok(out)
    })
}

fn report(
    ask: &Ask<'_>,
    imported: &lgsp_import::Import,
    sent: &[(usize, Result<Delivery, String>)],
) {
    let mut out = std::io::stdout().lock();
    if ask.json {
        let sent: Vec<serde_json::Value> = sent
            .iter()
            .map(|(row, d)| match d {
                Ok(d) => serde_json::json!({"row": row, "delivery": d}),
                Err(e) => serde_json::json!({"row": row, "error": e}),
            })
            .collect();
        let doc = serde_json::json!({"import": imported, "sent": sent});
        let _ = writeln!(out, "{doc}");
        return;
    }
    for column in &imported.ignored_columns {
        let _ = writeln!(
            out,
            "{}!{column}: not a column of the template; ignored",
            imported.sheet
        );
    }
    for row in &imported.rows {
        for p in &row.problems {
            let _ = writeln!(out, "{p}");
        }
    }
    for (row, d) in sent {
        let line = match d {
            Ok(d) if d.accepted() => format!(
                "row {row}: sent, message {}, receipt {}",
                d.message_id.as_deref().unwrap_or("-"),
                d.receipt_id.as_deref().unwrap_or("-")
            ),
            Ok(d) => format!(
                "row {row}: refused, HTTP {} {}: {}",
                d.status,
                d.code.as_deref().unwrap_or("-"),
                d.detail.as_deref().unwrap_or("")
            ),
            Err(e) => format!("row {row}: not sent: {e}"),
        };
        let _ = writeln!(out, "{line}");
    }
    let good = imported.rows.iter().filter(|r| r.is_good()).count();
    let problems: usize = imported.rows.iter().map(|r| r.problems.len()).sum();
    let _ = writeln!(
        out,
        "{} (sheet {}): {} rows: {good} packets written to {}, {} rows with {problems} problems{}",
        ask.file.display(),
        imported.sheet,
        imported.rows.len(),
        ask.out.display(),
        imported.rows.len() - good,
        if sent.is_empty() {
            String::new()
        } else {
            let ok = sent
                .iter()
                .filter(|(_, d)| d.as_ref().is_ok_and(Delivery::accepted))
                .count();
            format!("; {ok} of {} sent and accepted", sent.len())
        }
    );
}
