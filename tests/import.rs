//! `lgsp-gateway import` driven as a clerk's IT desk would: a filled CSV template turned into packets, the bad
//! row named by its cells, `--send` posting the good ones through a running chain, each with its receipt, a rerun
//! answered from the journal, and `lgsp-gateway reconcile` over the list the import wrote.

use std::process::Command;

use lgsp_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_lgsp-gateway");

const HEADINGS: &str = "Mã đơn vị,Số CCCD,Họ và tên,Ngày sinh,Giới tính,Dân tộc,Loại cán bộ,Mã ngạch/chức danh,Hạng chức danh,Bậc lương,Hệ số lương,Ngày tuyển dụng,Trình độ chuyên môn";
const TEACHER: &str = "000.01.00.H29,001090012345,Nguyễn Văn An,12/05/1990,Nam,Kinh,Viên chức,V.07.03.29,III,2,\"2,67\",01/09/2015,Đại học";
const CLERK: &str = "000.00.00.H29,1190012345,Trần Thị Bình,12/05/1990,Nữ,Tày,Công chức,01.003,,3,\"3,00\",01/09/2015,Thạc sĩ";
const BAD: &str = "000.00.00.H29,001090012346,Lê Văn Cường,12/05/1990,Nam,Kinh,Công chức,01.003,,3,\"3,10\",01/09/2015,Đại học";

#[tokio::test(flavor = "multi_thread")]
async fn a_filled_template_is_imported_checked_and_sent_with_receipts() {
    let chain = Chain::start().await;
    let dir = chain.pki.dir().to_owned();
    std::fs::write(
        dir.join("thang-11.csv"),
        format!("{HEADINGS}\n{TEACHER}\n{BAD}\n{CLERK}\n"),
    )
    .unwrap();
    let url = chain.lgsp_url("/lgsp/v1");
    let args = |file: &str, out: &str| {
        vec![
            "import".to_owned(),
            file.to_owned(),
            "--out".into(),
            out.into(),
            "--send".into(),
            "--url".into(),
            url.clone(),
            "--cert".into(),
            format!("{AGENCY_OK}.pem"),
            "--key".into(),
            format!("{AGENCY_OK}.key"),
            "--ca".into(),
            "ca.pem".into(),
            "--api-key".into(),
            "lgsp_dev_000.00.00.H29_production".into(),
        ]
    };
    let run = |args: Vec<String>| {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap()
        })
    };
    let out = run(args("thang-11.csv", "goi")).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a bad row fails the import\n{stdout}"
    );
    assert!(
        stdout.contains("thang-11!K3: HeSoLuong: HeSoLuong 3.10 is not the coefficient of step 3 of salary group A1 (01.003 Chuyên viên): expected 3.00 (salary.coefficient_mismatch)"),
        "{stdout}"
    );
    let sent: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(": sent, message "))
        .collect();
    assert_eq!(sent.len(), 2, "{stdout}");
    assert!(
        sent[0].starts_with("row 2: sent") && sent[1].starts_with("row 4: sent"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "3 rows: 2 packets written to goi, 1 rows with 1 problems; 2 of 2 sent and accepted"
        ),
        "{stdout}"
    );
    let packets = std::fs::read_dir(dir.join("goi"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "xml"))
        .count();
    assert_eq!(packets, 2);
    // What was sent, under which key, for `reconcile --sent`.
    let sent_csv = std::fs::read_to_string(dir.join("goi/sent.csv")).unwrap();
    let rows: Vec<&str> = sent_csv.lines().collect();
    assert_eq!(rows[0], "idempotency_key,sha256,message_id,row,status");
    assert_eq!(rows.len(), 3, "{sent_csv}");
    assert!(
        rows[1].starts_with("sha256-") && rows[1].ends_with(",2,200"),
        "{sent_csv}"
    );
    // The national endpoint holds both, as the agency's data.
    assert_eq!(chain.emulator.emulator.as_ref().unwrap().1.stored(), 2);

    // Fixed, the file imports clean and exits 0; JSON says the same.
    std::fs::write(dir.join("sua.csv"), format!("{HEADINGS}\n{TEACHER}\n")).unwrap();
    let mut a = args("sua.csv", "goi-2");
    a.push("--json".into());
    let out = run(a).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["import"]["rows"][0]["problems"], serde_json::json!([]));
    assert_eq!(doc["sent"][0]["delivery"]["status"], 200);
    assert!(
        doc["sent"][0]["delivery"]["receipt_id"].is_string(),
        "{doc}"
    );
    // The teacher's packet was sent already: under the same key it is answered again, not delivered twice.
    let first_id = rows[1].split(',').nth(2).unwrap();
    assert_eq!(doc["sent"][0]["delivery"]["message_id"], first_id, "{doc}");
    assert_eq!(chain.emulator.emulator.as_ref().unwrap().1.stored(), 2);

    // Reconciliation against what the LGSP journalled: both delivered; a line the gateway never saw is missing.
    let reconcile = |sent: &str| {
        let mut a = args("-", "-");
        a.splice(0..4, ["reconcile".to_owned()]);
        a.retain(|x| x != "--send");
        a.extend(["--from", "2000-01-01", "--to", "2100-01-01", "--sent", sent].map(str::to_owned));
        a
    };
    let out = run(reconcile("goi/sent.csv")).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.ends_with("2 sent: 2 delivered, 0 pending, 0 rejected, 0 failed, 0 changed, 0 missing, 0 lost; 0 unexpected\n"),
        "{stdout}"
    );
    // End to end: each delivered packet's receipt found at the national endpoint, through the LGSP's BienNhan.
    let mut e2e = reconcile("goi/sent.csv");
    e2e.push("--end-to-end".into());
    let out = run(e2e).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("2 sent: 2 delivered,")
            && stdout.contains("0 lost"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        dir.join("more.csv"),
        format!(
            "{sent_csv}sha256-{},{},,,\n",
            "0".repeat(64),
            "0".repeat(64)
        ),
    )
    .unwrap();
    let out = run(reconcile("more.csv")).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("line 4: missing key sha256-000"),
        "{stdout}"
    );
    chain.shutdown().await;
}

#[test]
fn without_send_nothing_leaves_the_machine_and_a_missing_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.csv"), format!("{HEADINGS}\n{TEACHER}\n")).unwrap();
    let out = Command::new(BIN)
        .args(["import", "a.csv", "--out", "out"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 rows: 1 packets written to out, 0 rows with 0 problems"),
        "{stdout}"
    );
    std::fs::write(
        dir.path().join("b.csv"),
        "Mã đơn vị,Số CCCD,Họ và tên\nx,y,z\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["import", "b.csv", "--out", "out"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("lacks the column `Ngày sinh` (NgaySinh)"),
        "{stderr}"
    );
}
