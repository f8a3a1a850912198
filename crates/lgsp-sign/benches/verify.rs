//! What signatures cost a hop, per request: signing a forwarded request and verifying it at the next hop (RFC 9421
//! over a 4 KiB packet), and verifying an approval's two signatures (XML-DSig and JWS, the committed sample
//! approvals against the sample CA) — each next to the SHA-256 of the same bytes, measured in the same run, so the
//! figures read as ratios. `cargo bench -p lgsp-sign --bench verify`.

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use lgsp_sign::http::{Covered, HopKey, content_digest, verify};
use lgsp_sign::{Policy, TrustStore, Window};
use rustls_pki_types::CertificateDer;

fn samples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/cbccvc/samples")
}

fn bench(c: &mut Criterion) {
    let signing = samples().join("signing");
    let key_pem = std::fs::read(signing.join("agency.key.pem")).expect("key");
    let cert =
        lgsp_sign::xml::pem_certificates(&std::fs::read(signing.join("agency.pem")).expect("cert"))
            .expect("pem");
    let spki = {
        use x509_parser::prelude::FromDer;
        let (_, c) = x509_parser::certificate::X509Certificate::from_der(&cert[0]).expect("x509");
        c.public_key().raw.to_vec()
    };
    let key = HopKey::from_pem(&key_pem, "LGSP-DEV").expect("hop key");
    let body = vec![b'x'; 4096];
    let now = 1_790_000_000;
    let digest = content_digest(&body);
    let covered = Covered {
        method: "POST",
        target_uri: "https://ndxp.example:8443/ndxp/v1/HoSoCBCCVC",
        content_digest: &digest,
        message_id: "01a2b3c4-0000-7000-8000-000000000001",
        client: "000.00.00.H29",
    };
    let signed = key.sign(&covered, now).expect("sign");
    let mut g = c.benchmark_group("hop");
    g.bench_function("sha256 of the 4 KiB body (baseline)", |b| {
        b.iter(|| content_digest(std::hint::black_box(&body)))
    });
    g.bench_function("sign (digest + ECDSA P-256)", |b| {
        b.iter(|| {
            let d = content_digest(&body);
            key.sign(
                &Covered {
                    content_digest: &d,
                    ..covered
                },
                now,
            )
            .expect("sign")
        })
    });
    g.bench_function("verify (digest + ECDSA P-256)", |b| {
        b.iter(|| {
            let d = content_digest(&body);
            verify(
                &spki,
                "LGSP-DEV",
                &Covered {
                    content_digest: &d,
                    ..covered
                },
                Some(&signed.input),
                Some(&signed.signature),
                now,
            )
            .expect("verifies")
        })
    });
    g.finish();

    let ca = lgsp_sign::xml::pem_certificates(&std::fs::read(signing.join("ca.pem")).expect("ca"))
        .expect("pem");
    let ca: Vec<CertificateDer<'_>> = ca.into_iter().map(CertificateDer::from).collect();
    let policy = Policy {
        trust: TrustStore::new(&ca, &[]).expect("trust"),
        identity_prefix: "urn:lgsp:id:".into(),
        window: Window::default(),
    };
    let mut g = c.benchmark_group("approval");
    for ext in ["xml", "json"] {
        let packet =
            std::fs::read(samples().join(format!("valid/PheDuyetDuLieu-01-hai-ho-so.{ext}")))
                .expect("sample");
        g.bench_function(format!("sha256 of the {ext} approval (baseline)"), |b| {
            b.iter(|| content_digest(std::hint::black_box(&packet)))
        });
        g.bench_function(format!("verify both signatures, {ext}"), |b| {
            b.iter(|| {
                let verdict = if ext == "xml" {
                    policy.verify_xml(&packet, Some("000.00.00.H29"), None)
                } else {
                    policy.verify_json(&packet, Some("000.00.00.H29"), None)
                };
                verdict.expect("approved")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
