//! Data back to agencies, end to end over real TLS against the machine's NATS: the emulator publishes what the
//! national side shares with each agency (`POST /cbccvc/v1/ChiaSe/{agency}`), and each agency pages through its own
//! inbox on the LGSP hop (`GET /lgsp/v1/inbox?after=&limit=`), acknowledging a page by asking for the next — never
//! seeing another agency's packets, whatever it asks. `LGSP_TEST_NATS_URL` names the broker; without it the test
//! says why it skips.

use lgsp_testkit::*;

const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";
const KEY_H26: &str = "lgsp_dev_000.00.00.H26_production";
const KEY_H29_TRIAL: &str = "lgsp_dev_000.00.00.H29_trial";

#[tokio::test(flavor = "multi_thread")]
async fn each_agency_pages_through_its_own_inbox_and_nothing_else() {
    let Ok(url) = std::env::var("LGSP_TEST_NATS_URL") else {
        eprintln!(
            "skipped: LGSP_TEST_NATS_URL is not set (.ci/run sets it to the machine's broker)"
        );
        return;
    };
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let addr = rest
        .split('/')
        .next()
        .unwrap_or(rest)
        .replace("localhost", "127.0.0.1");
    let (js, stream, prefix) = test_stream(&url, "LGSPOUT", "lgspout.").await;

    let pki = TestPki::new();
    let emu_text = emulator_config(&pki).replacen(
        "[emulator]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[emulator]\nlisten = \"127.0.0.1:0\"\nshare = \"nats://{addr}/{prefix}\"\n"),
        1,
    );
    let emulator = lgsp_proxy::Gateway::start(&parse(&pki, &emu_text))
        .await
        .expect("emulator");
    let emu_port = emulator
        .emulator
        .as_ref()
        .map(|e| e.0.port())
        .expect("emulator port");
    let nowhere = closed_port().await;
    let lgsp_text = hop_config(&pki, "lgsp", "/lgsp/v1", nowhere, "/ndxp/v1", &[]).replacen(
        "[[hop.route]]\nname = \"messages\"",
        &format!(
            "[[hop.route]]\nname = \"inbox\"\nmethods = [\"GET\"]\nprefix = \"/lgsp/v1/inbox\"\ninbox = \"nats://{addr}/{prefix}\"\nagencies = [\"*\"]\n\n[[hop.route]]\nname = \"messages\""
        ),
        1,
    );
    let lgsp = lgsp_proxy::Gateway::start(&parse(&pki, &lgsp_text))
        .await
        .expect("lgsp hop");

    // The national side shares three packets with H29 and two with H26.
    let national = TestClient::new(&pki, Some("ndxp-client"), false);
    let mut shared = Vec::new();
    for (agency, n) in [("000.00.00.H29", 3), ("000.00.00.H26", 14)] {
        for i in 0..n {
            let body = format!("<HoSoCBCCVC><MaDonVi>{agency}</MaDonVi><n>{i}</n></HoSoCBCCVC>");
            let a = national
                .send(
                    "POST",
                    &format!("https://localhost:{emu_port}/cbccvc/v1/ChiaSe/{agency}"),
                    &[
                        ("content-type", "application/xml"),
                        ("x-lgsp-message-type", "HoSoCBCCVC"),
                    ],
                    &body,
                )
                .await
                .expect("shared");
            assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
            shared.push((
                agency,
                a.json()["message_id"].as_str().expect("id").to_owned(),
                body,
            ));
        }
    }

    let inbox = |identity: &'static str, key: &'static str, query: String| {
        let client = TestClient::new(&pki, Some(identity), false);
        let url = hop_url(&lgsp, "lgsp", &format!("/lgsp/v1/inbox{query}"));
        async move {
            client
                .send("GET", &url, &[("x-api-key", key)], "")
                .await
                .expect("inbox answered")
        }
    };
    // H29: a page of two, then the rest, then nothing new; the cursor is the acknowledgement.
    let first = inbox(AGENCY_OK, KEY_H29, "?limit=2".into()).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let page = first.json();
    assert_eq!(page["agency"], "000.00.00.H29");
    assert_eq!(page["packets"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["more"], true);
    let next = page["next"].as_u64().expect("cursor");
    let second = inbox(AGENCY_OK, KEY_H29, format!("?after={next}&limit=2"))
        .await
        .json();
    assert_eq!(second["packets"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["more"], false);
    let last = second["next"].as_u64().expect("cursor");
    let empty = inbox(AGENCY_OK, KEY_H29, format!("?after={last}"))
        .await
        .json();
    assert_eq!(empty["packets"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        empty["next"].as_u64(),
        Some(last),
        "no new packets: the cursor stays"
    );
    let read: Vec<(String, String)> = page["packets"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(second["packets"].as_array().into_iter().flatten())
        .map(|p| {
            assert_eq!(p["message_type"], "HoSoCBCCVC");
            (
                p["message_id"].as_str().unwrap_or_default().to_owned(),
                p["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let h29: Vec<(String, String)> = shared
        .iter()
        .filter(|(a, ..)| *a == "000.00.00.H29")
        .map(|(_, id, body)| (id.clone(), body.clone()))
        .collect();
    assert_eq!(read, h29, "H29's packets, in the order shared");
    // Asking again from an older cursor reads the same packets again (at least once).
    let again = inbox(AGENCY_OK, KEY_H29, "?after=0&limit=1".into())
        .await
        .json();
    assert_eq!(
        again["packets"][0]["message_id"].as_str(),
        Some(h29[0].0.as_str())
    );

    // H26 sees its own fourteen (pulled ten at a time) and none of H29's, even from cursor 0.
    let theirs = inbox(AGENCY_OTHER, KEY_H26, "?after=0&limit=100".into()).await;
    assert_eq!(
        theirs.status,
        200,
        "{}",
        String::from_utf8_lossy(&theirs.body)
    );
    let ids: Vec<String> = theirs.json()["packets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["message_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let h26: Vec<String> = shared
        .iter()
        .filter(|(a, ..)| *a == "000.00.00.H26")
        .map(|(_, id, _)| id.clone())
        .collect();
    assert_eq!(ids, h26);

    // A page holds at most MAX_PAGE_BYTES (8 MiB) of bodies: ten packets of 900 KiB come in two pages.
    let last26 = theirs.json()["next"].as_u64().expect("cursor");
    let big = format!("<HoSoCBCCVC>{}</HoSoCBCCVC>", "x".repeat(900 * 1024));
    for _ in 0..10 {
        let a = national
            .send(
                "POST",
                &format!("https://localhost:{emu_port}/cbccvc/v1/ChiaSe/000.00.00.H26"),
                &[("content-type", "application/xml")],
                &big,
            )
            .await
            .expect("shared");
        assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    }
    let page = inbox(AGENCY_OTHER, KEY_H26, format!("?after={last26}&limit=100"))
        .await
        .json();
    let bodies = |page: &serde_json::Value| -> Vec<usize> {
        page["packets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["body"].as_str().map_or(0, str::len))
            .collect()
    };
    let first = bodies(&page);
    assert!(
        first.iter().sum::<usize>() <= lgsp_proxy::inbox::MAX_PAGE_BYTES,
        "{first:?}"
    );
    assert!(first.len() < 10 && page["more"] == true, "{first:?}");
    let rest = inbox(
        AGENCY_OTHER,
        KEY_H26,
        format!(
            "?after={}&limit=100",
            page["next"].as_u64().expect("cursor")
        ),
    )
    .await
    .json();
    assert_eq!(first.len() + bodies(&rest).len(), 10);
    assert_eq!(rest["more"], false);

    // A trial key reads nothing of production data; a bad cursor is named.
    let trial = inbox(AGENCY_OK, KEY_H29_TRIAL, String::new()).await;
    assert_eq!(
        (trial.status.as_u16(), trial.json()["code"].as_str()),
        (403, Some("trial.not_offered"))
    );
    let bad = inbox(AGENCY_OK, KEY_H29, "?limit=1000".into()).await;
    assert_eq!(
        (bad.status.as_u16(), bad.json()["code"].as_str()),
        (400, Some("inbox.bad_query"))
    );

    // check-config --connect finds the stream that takes every agency's inbox.
    let path = write(pki.dir(), "lgsp.toml", &lgsp_text);
    let (_, out, _) = tokio::task::block_in_place(|| {
        sh(&format!(
            "cd {} && {} check-config {path} --connect --timeout 5",
            pki.dir().display(),
            env!("CARGO_BIN_EXE_lgsp-gateway")
        ))
    });
    let reached = format!(
        "✓ hop lgsp inbox inbox ← nats {addr} {prefix}.<agency>: JetStream stream {stream}"
    );
    assert!(out.contains(&reached), "{reached:?} not in:\n{out}");

    lgsp.shutdown().await;
    emulator.shutdown().await;
    js.delete_stream(&stream)
        .await
        .expect("drop the test stream");
}
