//! Live reload: new requests see the new config, in-flight ones finish on the old, a bad file is refused with its
//! line and the old config keeps serving — and under continuous load no request fails while reloading.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lgsp_testkit::*;

const KEY_H29: &str = "lgsp_dev_000.00.00.H29_production";

fn headers(key: &str) -> Vec<(&str, &str)> {
    vec![("x-api-key", key), ("content-type", "application/xml")]
}

fn packet() -> String {
    sample("valid/HoSoCBCCVC-02-toi-thieu.xml")
}

/// Packets sent one after another until stopped (at most 3000), each with the header `auth` gives at that moment;
/// what succeeded and what failed counted.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    worker: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(
        client: TestClient,
        url: String,
        auth: impl Fn() -> (&'static str, String) + Send + 'static,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let worker = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let body = packet();
                for _ in 0..3000 {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let (name, value) = auth();
                    let h = [(name, value.as_str()), ("content-type", "application/xml")];
                    match client.send("POST", &url, &h, &body).await {
                        Ok(a) if a.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        };
        Load {
            stop,
            ok,
            failed,
            worker,
        }
    }

    /// Waits until `n` more requests succeeded (or one failed).
    async fn some(&self, n: usize) {
        let before = self.ok.load(Ordering::Relaxed);
        while self.ok.load(Ordering::Relaxed) < before + n
            && self.failed.load(Ordering::Relaxed) == 0
        {
            tokio::task::yield_now().await;
        }
    }

    /// Stops it; the number of failed requests.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Release);
        self.worker.await.unwrap();
        self.failed.load(Ordering::Relaxed)
    }
}

/// An LGSP gateway started from a config file, in front of `chain`'s NDXP hop.
async fn lgsp_from_file(chain: &Chain, text: &str) -> (lgsp_proxy::Gateway, std::path::PathBuf) {
    let path = chain.pki.path("lgsp-reload.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = parse(&chain.pki, text);
    (
        lgsp_proxy::Gateway::start_from(&cfg, Some(path.clone()))
            .await
            .unwrap(),
        path,
    )
}

/// Relative paths of the test config resolve in the PKI dir; `load` resolves them in the current directory, so
/// reloaded files use absolute paths.
fn absolute(chain: &Chain, text: &str) -> String {
    let dir = chain.pki.dir().display().to_string();
    let mut out = text.to_owned();
    for f in [
        "ca.pem",
        "ca.crl.pem",
        "lgsp-server.pem",
        "lgsp-server.key",
        "lgsp-client.pem",
        "lgsp-client.key",
    ] {
        out = out.replace(&format!("\"{f}\""), &format!("\"{dir}/{f}\""));
    }
    out
}

/// A POST to the admin listener with the test PKI's admin token.
async fn admin_post(pki: &TestPki, admin: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = std::fs::read_to_string(pki.path("admin.token")).unwrap();
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {admin}\r\nauthorization: Bearer {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        token.trim()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn reloading_under_continuous_load_fails_no_request() {
    let chain = Chain::start().await;
    let ndxp = chain.ndxp.hop_addr("ndxp").unwrap();
    let base = absolute(&chain, &lgsp_config_with(&chain.pki, ndxp, "", ""));
    let (lgsp, path) = lgsp_from_file(&chain, &base).await;
    let url = hop_url(&lgsp, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for http2 in [false, true] {
        let (client, url, stop, ok, failed) = (
            TestClient::new(&chain.pki, Some(AGENCY_OK), http2),
            url.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let body = packet();
            // Bounded: at most 2000 requests per worker, stopping as soon as the reloads are done.
            for _ in 0..2000 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                match client.send("POST", &url, &headers(KEY_H29), &body).await {
                    Ok(a) if a.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for i in 0..12 {
        // Alternate two real changes: the route timeout and the log level.
        let text = if i % 2 == 0 {
            base.replace("timeout = \"5s\"\nagencies", "timeout = \"7s\"\nagencies")
        } else {
            base.clone()
        };
        std::fs::write(&path, text).unwrap();
        if i % 3 == 0 {
            let answer = admin_post(&chain.pki, lgsp.admin, "/admin/reload").await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        } else {
            let r = lgsp.reloader.clone();
            tokio::task::spawn_blocking(move || r.reload())
                .await
                .unwrap()
                .unwrap();
        }
        // Let some requests through on each config.
        let before = ok.load(Ordering::Relaxed);
        while ok.load(Ordering::Relaxed) < before + 3 && failed.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::Release);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) >= 36);
    assert_eq!(
        lgsp.metrics
            .config_reloads
            .with_label_values(&["success"])
            .get(),
        12
    );
    lgsp.shutdown().await;
    chain.shutdown().await;
}

#[tokio::test]
async fn a_bad_file_is_refused_with_its_line_and_the_old_config_keeps_serving() {
    let chain = Chain::start().await;
    let ndxp = chain.ndxp.hop_addr("ndxp").unwrap();
    let base = absolute(&chain, &lgsp_config_with(&chain.pki, ndxp, "", ""));
    let (lgsp, path) = lgsp_from_file(&chain, &base).await;
    let bad = base.replacen("timeout = \"5s\"", "timeout = \"soon\"", 1);
    std::fs::write(&path, &bad).unwrap();
    let answer = admin_post(&chain.pki, lgsp.admin, "/admin/reload").await;
    let line = bad.lines().position(|l| l.contains("\"soon\"")).unwrap() + 1;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains(&format!("lgsp-reload.toml:{line}:")),
        "{answer}"
    );
    assert_eq!(
        lgsp.metrics
            .config_reloads
            .with_label_values(&["failure"])
            .get(),
        1
    );
    // A listener change is refused too: it needs a restart.
    std::fs::write(
        &path,
        base.replace(
            "listen = \"127.0.0.1:0\"\npeers",
            "listen = \"127.0.0.1:1\"\npeers",
        ),
    )
    .unwrap();
    assert!(lgsp.reloader.reload().unwrap_err().contains("restart"));
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), true);
    let url = hop_url(&lgsp, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    assert_eq!(
        client
            .status("POST", &url, &headers(KEY_H29), &packet())
            .await,
        200
    );
    lgsp.shutdown().await;
    chain.shutdown().await;
}

#[tokio::test]
async fn new_keys_and_agencies_take_effect_on_reload() {
    let chain = Chain::start().await;
    let ndxp = chain.ndxp.hop_addr("ndxp").unwrap();
    let base = absolute(&chain, &lgsp_config_with(&chain.pki, ndxp, "", ""));
    let (lgsp, path) = lgsp_from_file(&chain, &base).await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), true);
    let url = hop_url(&lgsp, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    let new_key = "lgsp_prod_reloaded_key_for_h29";
    assert_eq!(
        client
            .status("POST", &url, &headers(new_key), &packet())
            .await,
        401
    );
    let with_key = base.replacen(
        "keys = [\n",
        &format!(
            "keys = [\n    {{ sha256 = \"{}\", kind = \"production\" }},\n",
            lgsp_auth::sha256_hex(new_key)
        ),
        1,
    );
    std::fs::write(&path, with_key).unwrap();
    lgsp.reloader.reload().unwrap();
    assert_eq!(
        client
            .status("POST", &url, &headers(new_key), &packet())
            .await,
        200
    );
    // And removed again: the old dev key still works, the new one no longer does.
    std::fs::write(&path, &base).unwrap();
    lgsp.reloader.reload().unwrap();
    assert_eq!(
        client
            .status("POST", &url, &headers(new_key), &packet())
            .await,
        401
    );
    assert_eq!(
        client
            .status("POST", &url, &headers(KEY_H29), &packet())
            .await,
        200
    );
    lgsp.shutdown().await;
    chain.shutdown().await;
}

#[tokio::test]
async fn rate_limit_state_survives_a_reload_that_keeps_the_limits() {
    let chain = Chain::start().await;
    let ndxp = chain.ndxp.hop_addr("ndxp").unwrap();
    let base = absolute(
        &chain,
        &lgsp_config_with(&chain.pki, ndxp, "rate = \"1/h\"\nburst = 2", ""),
    );
    let (lgsp, path) = lgsp_from_file(&chain, &base).await;
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), true);
    let url = hop_url(&lgsp, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    for _ in 0..2 {
        assert_eq!(
            client
                .status("POST", &url, &headers(KEY_H29), &packet())
                .await,
            200
        );
    }
    // An unrelated change: the spent burst stays spent.
    std::fs::write(
        &path,
        base.replace("timeout = \"5s\"\nagencies", "timeout = \"6s\"\nagencies"),
    )
    .unwrap();
    lgsp.reloader.reload().unwrap();
    assert_eq!(
        client
            .status("POST", &url, &headers(KEY_H29), &packet())
            .await,
        429
    );
    lgsp.shutdown().await;
    chain.shutdown().await;
}

/// A copy of the shipped schemas and code lists in `dir/schemas`, for an operator to edit.
fn copy_schemas(dir: &std::path::Path) -> std::path::PathBuf {
    let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/cbccvc");
    let to = dir.join("schemas");
    for sub in ["", "codes"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for e in std::fs::read_dir(from.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, to.join(sub).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    to
}

#[tokio::test]
async fn an_operator_adds_a_title_code_to_the_list_and_a_reload_takes_it() {
    let chain = Chain::start().await;
    let ndxp = chain.ndxp.hop_addr("ndxp").unwrap();
    let schemas = copy_schemas(chain.pki.dir());
    let extra = format!("[validation]\nschemas = \"{}\"\n", schemas.display());
    let (lgsp, _path) = lgsp_from_file(
        &chain,
        &absolute(&chain, &lgsp_config_with(&chain.pki, ndxp, "", &extra)),
    )
    .await;
    // The dry run answers at this hop: every hop checks with its own lists (the NDXP behind it still has the
    // shipped ones, and would refuse the packet until its operator adds the code too).
    let url = hop_url(&lgsp, "lgsp", "/lgsp/v1/validate/HoSoCBCCVC");
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), false);
    // A school librarian (thư viện viên hạng III, V.10.02.07 — a code this list does not carry yet), group A1.
    let profile = packet()
        .replace("<MaNgach>01.003</MaNgach>", "<MaNgach>V.10.02.07</MaNgach>")
        .replace("<BacLuong>3</BacLuong>", "<BacLuong>1</BacLuong>")
        .replace("<HeSoLuong>3.00</HeSoLuong>", "<HeSoLuong>2.34</HeSoLuong>");
    let a = client
        .send("POST", &url, &headers(KEY_H29), &profile)
        .await
        .unwrap();
    assert_eq!(a.status, 422, "{}", String::from_utf8_lossy(&a.body));
    let e = &a.json()["errors"][0];
    assert_eq!(e["rule"], "code.unknown");
    assert!(e["message"].as_str().unwrap().contains("list ngach"), "{e}");

    // A broken edit is refused with its line, and the old list keeps serving.
    let list = schemas.join("codes/ngach.csv");
    let original = std::fs::read_to_string(&list).unwrap();
    std::fs::write(
        &list,
        format!("{original}V.10.02.07,Thư viện viên hạng III,A9,VienChuc,III,x\n"),
    )
    .unwrap();
    let r = lgsp.reloader.clone();
    let e = tokio::task::spawn_blocking(move || r.reload())
        .await
        .unwrap()
        .unwrap_err();
    let line = original.lines().count() + 1;
    assert!(
        e.contains(&format!("codes/ngach.csv:{line}")) && e.contains("nhom_luong `A9`"),
        "{e}"
    );
    std::fs::write(&list, format!("{original}V.10.02.07,Thư viện viên hạng III,A1,VienChuc,III,Thông tư 02/2022/TT-BVHTTDL\n")).unwrap();
    let r = lgsp.reloader.clone();
    tokio::task::spawn_blocking(move || r.reload())
        .await
        .unwrap()
        .unwrap();
    let a = client
        .send("POST", &url, &headers(KEY_H29), &profile)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["valid"], true);
    lgsp.shutdown().await;
    chain.shutdown().await;
}

#[tokio::test]
async fn an_api_key_rotated_under_continuous_load_fails_no_request() {
    let chain = Chain::start().await;
    let ndxp = chain.ndxp.hop_addr("ndxp").unwrap();
    let base = absolute(&chain, &lgsp_config_with(&chain.pki, ndxp, "", ""));
    let (lgsp, path) = lgsp_from_file(&chain, &base).await;
    let url = hop_url(&lgsp, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    // The procedure of README "Rotating keys": the new key is added beside the old, the agency switches to it,
    // the old one gets a not_after in the past (then is removed).
    const NEW_KEY: &str = "lgsp_rotated_000.00.00.H29_production";
    let h29 = base.find(&format!("code = \"{H29}\"")).expect("H29");
    let keys = h29 + base[h29..].find("keys = [\n").expect("keys") + "keys = [\n".len();
    let line = |extra: &str| {
        format!(
            "    {{ sha256 = \"{}\", kind = \"production\", label = \"rotated\"{extra} }},\n",
            lgsp_auth::sha256_hex(NEW_KEY)
        )
    };
    let mut both = base.clone();
    both.insert_str(keys, &line(""));
    let old_line = base[keys..]
        .lines()
        .next()
        .expect("the old key's line")
        .to_owned();
    let retired = both.replacen(
        &old_line,
        &old_line.replacen(" }", ", not_after = \"2020-01-01\" }", 1),
        1,
    );
    assert_ne!(retired, both, "{old_line}");

    let switched = Arc::new(AtomicBool::new(false));
    let load = {
        let switched = switched.clone();
        Load::start(
            TestClient::new(&chain.pki, Some(AGENCY_OK), true),
            url.clone(),
            move || {
                let key = if switched.load(Ordering::Acquire) {
                    NEW_KEY
                } else {
                    KEY_H29
                };
                ("x-api-key", key.to_owned())
            },
        )
    };
    let reload = |text: String| {
        let (r, path) = (lgsp.reloader.clone(), path.clone());
        async move {
            std::fs::write(&path, text).unwrap();
            tokio::task::spawn_blocking(move || r.reload())
                .await
                .unwrap()
                .unwrap();
        }
    };
    load.some(5).await;
    reload(both).await;
    load.some(5).await;
    switched.store(true, Ordering::Release);
    load.some(5).await;
    reload(retired).await;
    load.some(5).await;
    assert_eq!(load.stop().await, 0, "requests failed during the rotation");
    // The old key now answers its own refusal.
    let a = TestClient::new(&chain.pki, Some(AGENCY_OK), true)
        .send("POST", &url, &headers(KEY_H29), &packet())
        .await
        .unwrap();
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["code"], "auth.key_outside_validity");
    lgsp.shutdown().await;
    chain.shutdown().await;
}

#[tokio::test]
async fn a_token_secret_rotated_under_continuous_load_ends_no_valid_token() {
    let chain = Chain::start().await;
    let ndxp = chain.ndxp.hop_addr("ndxp").unwrap();
    let dir = chain.pki.dir().to_owned();
    std::fs::write(dir.join("token-a.secret"), [1u8; 32]).unwrap();
    std::fs::write(dir.join("token-b.secret"), [2u8; 32]).unwrap();
    let base = absolute(&chain, &lgsp_config_with(&chain.pki, ndxp, "", ""));
    let with = |current: &str, previous: Option<&str>| {
        let mut text = base.clone();
        text.push_str(&format!(
            "\n[token]\nsecret_file = \"{}\"\n",
            dir.join(current).display()
        ));
        if let Some(p) = previous {
            text.push_str(&format!(
                "previous_secret_file = \"{}\"\n",
                dir.join(p).display()
            ));
        }
        text
    };
    let (lgsp, path) = lgsp_from_file(&chain, &with("token-a.secret", None)).await;
    let url = hop_url(&lgsp, "lgsp", "/lgsp/v1/HoSoCBCCVC");
    let token_url = hop_url(&lgsp, "lgsp", "/token");
    let client = TestClient::new(&chain.pki, Some(AGENCY_OK), true);
    let basic = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{H29}:{KEY_H29}"))
        )
    };
    let token = |client: TestClient, token_url: String, basic: String| async move {
        let a = client
            .send(
                "POST",
                &token_url,
                &[
                    ("authorization", &basic),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                "grant_type=client_credentials",
            )
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        format!("Bearer {}", a.json()["access_token"].as_str().unwrap())
    };
    let old_token = token(client.clone(), token_url.clone(), basic.clone()).await;
    let load = {
        let bearer = old_token.clone();
        Load::start(client.clone(), url.clone(), move || {
            ("authorization", bearer.clone())
        })
    };
    load.some(5).await;
    // Rotated: B signs, A's tokens stay valid.
    std::fs::write(&path, with("token-b.secret", Some("token-a.secret"))).unwrap();
    let r = lgsp.reloader.clone();
    tokio::task::spawn_blocking(move || r.reload())
        .await
        .unwrap()
        .unwrap();
    load.some(5).await;
    let new_token = token(client.clone(), token_url.clone(), basic.clone()).await;
    assert_ne!(new_token, old_token);
    assert_eq!(
        load.stop().await,
        0,
        "a valid token was refused during the rotation"
    );
    // A dropped once its tokens have expired (here: at once): they end, B's work.
    std::fs::write(&path, with("token-b.secret", None)).unwrap();
    let r = lgsp.reloader.clone();
    tokio::task::spawn_blocking(move || r.reload())
        .await
        .unwrap()
        .unwrap();
    let send = |bearer: String| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let h = [
                ("authorization", bearer.as_str()),
                ("content-type", "application/xml"),
            ];
            client
                .send("POST", &url, &h, &packet())
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(send(old_token).await, 401);
    assert_eq!(send(new_token).await, 200);
    lgsp.shutdown().await;
    chain.shutdown().await;
}

/// The SHA-256 fingerprint of the certificate `openssl s_client` is served at `port` (as `openssl x509` prints it).
fn served_fingerprint(dir: &std::path::Path, port: u16) -> String {
    let (ok, out, err) = sh(&format!(
        "cd {} && openssl s_client -connect 127.0.0.1:{port} -servername localhost -CAfile ca.pem \
         -cert {AGENCY_OK}.pem -key {AGENCY_OK}.key </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
        dir.display()
    ));
    assert!(ok, "{err}");
    out.trim().to_owned()
}

fn file_fingerprint(path: &std::path::Path) -> String {
    let (ok, out, err) = sh(&format!(
        "openssl x509 -noout -fingerprint -sha256 -in {}",
        path.display()
    ));
    assert!(ok, "{err}");
    out.trim().to_owned()
}

/// The procedure of README "Rotating keys" for a hop's own certificates: a new key and request (`certs csr`), the
/// CA's certificate (here openssl with the dev CA), the files replaced and a reload — under continuous load over a
/// held connection and over new ones, no request fails; new connections get the new server certificate, and the
/// next hop's journal shows the LGSP signing with the new key after the reload and the old one before.
#[tokio::test(flavor = "multi_thread")]
async fn the_hops_own_certificates_rotated_under_continuous_load_fail_no_request() {
    if !tool("openssl") {
        return;
    }
    let chain = Chain::start().await;
    let (pki, dir) = (&chain.pki, chain.pki.dir().to_owned());
    let ndxp = chain.ndxp.hop_addr("ndxp").unwrap();
    let (lgsp, _) = lgsp_from_file(
        &chain,
        &absolute(&chain, &lgsp_config_with(pki, ndxp, "", "")),
    )
    .await;
    let port = lgsp.hop_addr("lgsp").unwrap().port();
    let url = hop_url(&lgsp, "lgsp", "/lgsp/v1/HoSoCBCCVC");

    // 1. A new key and request, as the hop's operator makes them; the CA signs it (extensions as requested).
    let bin = env!("CARGO_BIN_EXE_lgsp-gateway");
    let (ok, _, err) = sh(&format!(
        "cd {d} && mkdir -p new && {bin} certs csr --hop LGSP-DEV --dns localhost --dns 127.0.0.1 --out new && \
         openssl x509 -req -in new/LGSP-DEV.csr.pem -CA ca.pem -CAkey ca.key -set_serial 0x5eed -days 30 \
         -copy_extensions copy -out new/LGSP-DEV.pem 2>&1",
        d = dir.display()
    ));
    assert!(ok, "{err}");
    let (old_cert, new_cert) = (pki.path("old-lgsp.pem"), pki.path("new/LGSP-DEV.pem"));
    std::fs::copy(pki.path("lgsp-client.pem"), &old_cert).unwrap();
    let old_served = served_fingerprint(&dir, port);
    assert_eq!(old_served, file_fingerprint(&pki.path("lgsp-server.pem")));

    // 2. Under load (one held HTTP/2 connection, and a new connection per request): the files replaced, reloaded.
    let held = Load::start(
        TestClient::new(pki, Some(AGENCY_OK), true),
        url.clone(),
        || ("x-api-key", KEY_H29.to_owned()),
    );
    let fresh = Load::start(
        TestClient::fresh_connections(pki, Some(AGENCY_OK)),
        url,
        || ("x-api-key", KEY_H29.to_owned()),
    );
    held.some(5).await;
    fresh.some(5).await;
    for stem in ["lgsp-server", "lgsp-client"] {
        std::fs::copy(
            pki.path("new/LGSP-DEV.key"),
            pki.path(&format!("{stem}.key")),
        )
        .unwrap();
        std::fs::copy(&new_cert, pki.path(&format!("{stem}.pem"))).unwrap();
    }
    let r = lgsp.reloader.clone();
    tokio::task::spawn_blocking(move || r.reload())
        .await
        .unwrap()
        .unwrap();
    held.some(5).await;
    fresh.some(5).await;
    assert_eq!(
        held.stop().await,
        0,
        "requests on the held connection failed"
    );
    assert_eq!(fresh.stop().await, 0, "requests on new connections failed");

    // 3. New connections are served the new certificate; the next hop saw the old key, then the new one.
    assert_eq!(served_fingerprint(&dir, port), file_fingerprint(&new_cert));
    let accepted = |r: &&serde_json::Value| r["record"]["kind"] == "accepted";
    let records: Vec<_> = journal_records_once(
        &chain.ndxp_journal,
        "a packet signed with the new key",
        |r| {
            r.iter().rfind(accepted).is_some_and(|l| {
                recorded_hop_signature_verifies(&l["record"]["hop_signature"], &new_cert, &[])
                    .is_ok()
            })
        },
    )
    .await
    .into_iter()
    .filter(|r| accepted(&r))
    .collect();
    let signature = |r: &serde_json::Value| r["record"]["hop_signature"].clone();
    let (first, last) = (
        signature(records.first().expect("records")),
        signature(records.last().expect("records")),
    );
    assert!(recorded_hop_signature_verifies(&first, &old_cert, &[]).is_ok());
    assert!(recorded_hop_signature_verifies(&last, &new_cert, &[]).is_ok());
    assert!(recorded_hop_signature_verifies(&last, &old_cert, &[]).is_err());
    lgsp.shutdown().await;
    chain.shutdown().await;
}
