//! `lgsp-gateway import`: a filled spreadsheet template to packets (`lgsp-import`), every bad cell reported where
//! the clerk sees it; `--send` posts the good packets through the connection settings of `probe`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use lgsp_probe::reconcile::packet_key;
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
            Ok(sent) => {
                if let Err(e) = write_sent(ask.out, &sent) {
                    return super::failed(e);
                }
                sent
            }
            Err(e) => return super::failed(e),
        },
        None => Vec::new(),
    };
    report(ask, &imported, &sent);
    let all_good = imported.rows.iter().all(|r| r.is_good());
    let all_sent = sent
        .iter()
        .all(|s| s.delivery.as_ref().is_ok_and(Delivery::accepted));
    if all_good && all_sent {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What became of one sent row.
struct Sent {
    row: usize,
    /// Its `Idempotency-Key` and its packet's SHA-256, as `reconcile --sent` reads them back.
    key: String,
    sha256: String,
    /// The gateway's answer, or why there was none.
    delivery: Result<Delivery, String>,
}

/// `sent.csv` beside the packets: the list `lgsp-gateway reconcile --sent` compares with the gateway's.
fn write_sent(out: &Path, sent: &[Sent]) -> Result<(), String> {
    let path = out.join("sent.csv");
    let mut text = String::from("idempotency_key,sha256,message_id,row,status\n");
    for s in sent {
        let (id, status) = match &s.delivery {
            Ok(d) => (
                d.message_id.clone().unwrap_or_default(),
                d.status.to_string(),
            ),
            Err(_) => (String::new(), "not_sent".into()),
        };
        text.push_str(&format!("{},{},{id},{},{status}\n", s.key, s.sha256, s.row));
    }
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

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
                // The same row sent again (a rerun after a failure) is replayed, never delivered twice.
                let (key, sha256) = packet_key(packet);
                let delivery = sender
                    .send(imported.message_type, packet.clone(), Some(&key))
                    .await;
                out.push(Sent {
                    row: row.row,
                    key,
                    sha256,
                    delivery,
                });
            }
        }
        Ok(out)
    })
}

fn report(ask: &Ask<'_>, imported: &lgsp_import::Import, sent: &[Sent]) {
    let mut out = std::io::stdout().lock();
    if ask.json {
        let sent: Vec<serde_json::Value> = sent
            .iter()
            .map(|s| match &s.delivery {
                Ok(d) => serde_json::json!({"row": s.row, "idempotency_key": s.key, "delivery": d}),
                Err(e) => serde_json::json!({"row": s.row, "idempotency_key": s.key, "error": e}),
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
    for s in sent {
        let row = s.row;
        let line = match &s.delivery {
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
                .filter(|s| s.delivery.as_ref().is_ok_and(Delivery::accepted))
                .count();
            format!("; {ok} of {} sent and accepted", sent.len())
        }
    );
}
