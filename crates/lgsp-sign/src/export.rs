//! Signed journal exports: `<XuatNhatKy>` (xuất nhật ký, the journal's records of a period) written record by
//! record and signed with the operator's XML-DSig signature, as the profile of `xml.rs` signs approvals — so
//! `lgsp-gateway verify` and xmlsec1 verify it — without holding the export in memory.
//!
//! How: the writer emits the document already in its exclusive-c14n form (attributes in canonical order, text
//! escaped as c14n escapes it, no empty-element tags) and feeds the same bytes to SHA-256 as it writes them; the
//! Reference's transforms (remove the signature, exclusive c14n) then yield exactly those bytes, so the digest is
//! known when the last record is written. The signature goes last, before the root's end tag; its SignedInfo is
//! written in canonical form too and signed as written.

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::xml::{DSIG, SignError, SigningKey};

/// The namespace of the export document.
pub const NS: &str = "urn:lgsp:journal:v1";
/// The root element.
pub const ROOT: &str = "XuatNhatKy";
/// One record.
pub const RECORD: &str = "BanGhi";

const FILTER2: &str = "http://www.w3.org/2002/06/xmldsig-filter2";
const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";

/// Text as exclusive c14n writes it.
fn text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

/// An attribute value as exclusive c14n writes it.
fn attribute(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

/// Writes a signed export: [`SignedExport::record`] for each record, then [`SignedExport::finish`].
pub struct SignedExport<'k, W: Write> {
    out: W,
    digest: aws_lc_rs::digest::Context,
    key: &'k SigningKey,
    records: u64,
    buf: String,
}

impl<'k, W: Write> SignedExport<'k, W> {
    /// Starts the document for the period `[from, to)` (RFC 3339), signed by `key` when finished.
    pub fn start(mut out: W, key: &'k SigningKey, from: &str, to: &str) -> std::io::Result<Self> {
        out.write_all(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")?;
        let mut this = SignedExport {
            out,
            digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            key,
            records: 0,
            buf: String::new(),
        };
        // Attributes in canonical order (no namespace, by local name): den, tu.
        let mut head = format!("<{ROOT} xmlns=\"{NS}\" den=\"");
        attribute(to, &mut head);
        head.push_str("\" tu=\"");
        attribute(from, &mut head);
        head.push_str("\">\n");
        this.emit(&head)?;
        Ok(this)
    }

    /// Writes and digests `s`.
    fn emit(&mut self, s: &str) -> std::io::Result<()> {
        self.digest.update(s.as_bytes());
        self.out.write_all(s.as_bytes())
    }

    /// One journal record: its chain, sequence number, link, hash and content (the JSON text the hash covers).
    pub fn record(
        &mut self,
        chain: &str,
        seq: i64,
        prev_hash: &str,
        hash: &str,
        content: &str,
    ) -> std::io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        // Attributes in canonical order: chain, hash, prevHash, seq.
        buf.push_str(&format!("<{RECORD} chain=\""));
        attribute(chain, &mut buf);
        buf.push_str("\" hash=\"");
        attribute(hash, &mut buf);
        buf.push_str("\" prevHash=\"");
        attribute(prev_hash, &mut buf);
        buf.push_str(&format!("\" seq=\"{seq}\">"));
        text(content, &mut buf);
        buf.push_str(&format!("</{RECORD}>\n"));
        let written = self.emit(&buf);
        self.buf = buf;
        self.records += 1;
        written
    }

    /// Signs what was written, appends the signature and ends the document; the number of records.
    pub fn finish(mut self) -> Result<u64, SignError> {
        // What follows the signature belongs to the signed content: the line break after it and the end tag.
        let tail = format!("\n</{ROOT}>");
        let mut digest = self.digest.clone();
        digest.update(tail.as_bytes());
        let digest = STANDARD.encode(digest.finish());
        let method = self.key.method;
        // SignedInfo as exclusive c14n renders it on its own: the ds namespace declared on it, every element with
        // an end tag, namespace declarations before attributes.
        let signed_info = format!(
            "<ds:SignedInfo xmlns:ds=\"{DSIG}\">\
<ds:CanonicalizationMethod Algorithm=\"{EXC_C14N}\"></ds:CanonicalizationMethod>\
<ds:SignatureMethod Algorithm=\"{method}\"></ds:SignatureMethod>\
<ds:Reference URI=\"\"><ds:Transforms>\
<ds:Transform Algorithm=\"{FILTER2}\"><dsig-xpath:XPath xmlns:dsig-xpath=\"{FILTER2}\" Filter=\"subtract\">//ds:Signature</dsig-xpath:XPath></ds:Transform>\
<ds:Transform Algorithm=\"{EXC_C14N}\"></ds:Transform></ds:Transforms>\
<ds:DigestMethod Algorithm=\"{SHA256}\"></ds:DigestMethod><ds:DigestValue>{digest}</ds:DigestValue>\
</ds:Reference></ds:SignedInfo>"
        );
        let key = self.key.software_key()?;
        let value = bergshamra::crypto::sign::from_uri(method)
            .and_then(|alg| alg.sign(&key, signed_info.as_bytes()))
            .map_err(|e| SignError::Sign(e.to_string()))?;
        let certs: String = self
            .key
            .chain
            .iter()
            .map(|c| {
                format!(
                    "<ds:X509Certificate>{}</ds:X509Certificate>",
                    STANDARD.encode(c)
                )
            })
            .collect();
        // In the document, SignedInfo inherits ds from Signature: the same canonical bytes as signed.
        let inner = signed_info.replacen(&format!(" xmlns:ds=\"{DSIG}\""), "", 1);
        let signature = format!(
            "<ds:Signature xmlns:ds=\"{DSIG}\">{inner}<ds:SignatureValue>{}</ds:SignatureValue>\
<ds:KeyInfo><ds:X509Data>{certs}</ds:X509Data></ds:KeyInfo></ds:Signature>",
            STANDARD.encode(value)
        );
        let io = |e: std::io::Error| SignError::Sign(format!("writing the export: {e}"));
        self.out.write_all(signature.as_bytes()).map_err(io)?;
        self.out.write_all(tail.as_bytes()).map_err(io)?;
        self.out.write_all(b"\n").map_err(io)?;
        self.out.flush().map_err(io)?;
        Ok(self.records)
    }
}
