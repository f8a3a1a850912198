//! A signing PKI for the tests: a signing CA, the people and agencies it certifies, and the bad certificates an
//! attacker or a careless integrator would bring.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

pub const AGENCY: &str = "000.00.00.H29";
pub const OTHER_AGENCY: &str = "000.00.00.H26";
pub const PREFIX: &str = "urn:lgsp:id:";

pub struct Ca {
    pub params: CertificateParams,
    pub key: KeyPair,
    pub pem: String,
    pub der: Vec<u8>,
}

pub struct Leaf {
    pub key_pem: String,
    pub cert_pem: String,
    pub der: Vec<u8>,
    pub serial: u64,
}

pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec![]).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = OffsetDateTime::now_utc() - Duration::days(3650);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
    let cert = params.self_signed(&key).expect("ca");
    Ca {
        pem: cert.pem(),
        der: cert.der().to_vec(),
        params,
        key,
    }
}

pub struct Spec<'a> {
    pub cn: &'a str,
    pub agency: Option<&'a str>,
    pub serial: u64,
    pub usages: Vec<KeyUsagePurpose>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub rsa: bool,
}

impl<'a> Spec<'a> {
    pub fn person(cn: &'a str, serial: u64) -> Self {
        Spec {
            cn,
            agency: None,
            serial,
            usages: vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::ContentCommitment,
            ],
            not_before: OffsetDateTime::now_utc() - Duration::days(3000),
            not_after: OffsetDateTime::now_utc() + Duration::days(3000),
            rsa: false,
        }
    }

    pub fn agency(code: &'a str, serial: u64) -> Self {
        Spec {
            agency: Some(code),
            ..Spec::person(code, serial)
        }
    }
}

impl Ca {
    pub fn issue(&self, spec: Spec<'_>) -> Leaf {
        let key = if spec.rsa {
            KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key")
        } else {
            KeyPair::generate().expect("key")
        };
        let mut params = CertificateParams::new(vec![]).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, spec.cn);
        params.distinguished_name.push(DnType::CountryName, "VN");
        if let Some(code) = spec.agency {
            params.subject_alt_names = vec![SanType::URI(
                format!("{PREFIX}{code}").try_into().expect("uri"),
            )];
        }
        params.serial_number = Some(SerialNumber::from(spec.serial));
        params.key_usages = spec.usages;
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("leaf");
        Leaf {
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
            der: cert.der().to_vec(),
            serial: spec.serial,
        }
    }

    /// A CRL revoking the given serials.
    pub fn crl(&self, serials: &[u64]) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::days(1),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - Duration::days(2),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_params(&self.params, &self.key);
        params.signed_by(&issuer).expect("crl").der().to_vec()
    }
}

/// An approval of last month... of the month whose last days hold `approved_at` (Vietnam time).
pub fn approval(month: &str, approved_at: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<PheDuyetDuLieu xmlns="urn:lgsp:cbccvc:v1" phienBan="1.0">
  <MaDonVi>{AGENCY}</MaDonVi>
  <KyPheDuyet>{month}</KyPheDuyet>
  <NguoiPheDuyet>Lê Văn Cường</NguoiPheDuyet>
  <ThoiDiemPheDuyet>{approved_at}</ThoiDiemPheDuyet>
  <SoLuongHoSo>2</SoLuongHoSo>
  <HoSo>
    <SoCCCD>001090012341</SoCCCD>
    <MaBanGhi>HS-0001</MaBanGhi>
    <BamSHA256>1111111111111111111111111111111111111111111111111111111111111111</BamSHA256>
  </HoSo>
  <HoSo>
    <SoCCCD>001090012342</SoCCCD>
    <MaBanGhi>HS-0002</MaBanGhi>
    <BamSHA256>2222222222222222222222222222222222222222222222222222222222222222</BamSHA256>
  </HoSo>
</PheDuyetDuLieu>
"#
    )
}

/// The same approval as JSON.
pub fn approval_json(month: &str, approved_at: &str) -> String {
    format!(
        r#"{{
  "PheDuyetDuLieu": {{
    "phienBan": "1.0",
    "MaDonVi": "{AGENCY}",
    "KyPheDuyet": "{month}",
    "NguoiPheDuyet": "Lê Văn Cường",
    "ThoiDiemPheDuyet": "{approved_at}",
    "SoLuongHoSo": 2,
    "HoSo": [
      {{"SoCCCD": "001090012341", "MaBanGhi": "HS-0001", "BamSHA256": "1111111111111111111111111111111111111111111111111111111111111111"}},
      {{"SoCCCD": "001090012342", "MaBanGhi": "HS-0002", "BamSHA256": "2222222222222222222222222222222222222222222222222222222222222222"}}
    ]
  }}
}}
"#
    )
}
