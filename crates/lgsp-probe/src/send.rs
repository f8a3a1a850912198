//! Sending packets to a gateway as an agency's HR system does, with the same connection settings as the probe
//! (`--profile`): one mTLS connection kept open, the API key on every request, `POST {url}/{MessageType}`.

use std::sync::Arc;

use http::{Method, Uri};
use lgsp_schema::Format;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::ProbeOptions;
use crate::steps::{Exchange, client_tls, exchange};

/// What the gateway answered to one packet.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub status: u16,
    /// The message id the gateway gave the packet (`X-LGSP-Message-Id`).
    pub message_id: Option<String>,
    /// The national endpoint's receipt (biên nhận), when it arrived.
    pub receipt_id: Option<String>,
    /// A refusal's problem code and detail.
    pub code: Option<String>,
    pub detail: Option<String>,
}

impl Delivery {
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One connection to a gateway's API base.
pub struct Sender {
    exchange: Exchange,
    base: String,
}

impl Sender {
    /// Connects (TCP, TLS with the agency's certificate) to the API base of `opts.url`.
    pub async fn connect(opts: &ProbeOptions) -> Result<Sender, String> {
        let url: Uri = opts
            .url
            .parse()
            .map_err(|e| format!("--url {} is not a URL: {e}", opts.url))?;
        let (Some("https"), Some(host)) = (url.scheme_str(), url.host()) else {
            return Err(format!(
                "--url {} is not an https URL with a host",
                opts.url
            ));
        };
        let host = host.trim_matches(['[', ']']).to_owned();
        let port = url.port_u16().unwrap_or(443);
        let tls = Arc::new(client_tls(opts)?);
        let tcp = tokio::time::timeout(opts.timeout, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| format!("no answer from {host}:{port} within {:?}", opts.timeout))?
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let name = ServerName::try_from(host.clone())
            .map_err(|e| format!("{host} is not a TLS server name: {e}"))?;
        let stream = tokio::time::timeout(
            opts.timeout,
            tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
        )
        .await
        .map_err(|_| format!("the TLS handshake did not finish within {:?}", opts.timeout))?
        .map_err(|e| format!("TLS handshake failed: {e}; `lgsp-gateway probe` says why"))?;
        let exchange = exchange(stream, opts, format!("{host}:{port}"), Format::Xml)
            .await
            .map_err(|e| format!("HTTP could not start over TLS: {e}"))?;
        Ok(Sender {
            exchange,
            base: url.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Posts one XML packet of `message_type`, under `key` (`Idempotency-Key`) when given: a resend of the same
    /// packet under the same key gets the first outcome again, never a second delivery.
    pub async fn send(
        &mut self,
        message_type: &str,
        packet: Vec<u8>,
        key: Option<&str>,
    ) -> Result<Delivery, String> {
        let path = format!("{}/{message_type}", self.base);
        let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        let answer = self.call(Method::POST, &path, &headers, packet).await?;
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        Ok(Delivery {
            status: answer.status.as_u16(),
            message_id: answer
                .headers
                .get("x-lgsp-message-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            receipt_id: text(&answer.body["receipt_id"]),
            code: text(&answer.body["code"]),
            detail: text(&answer.body["detail"]),
        })
    }

    /// `GET {base}{path}` as JSON, e.g. a page of `/messages`; a refusal as its problem's code and detail.
    pub async fn get_json(&mut self, path: &str) -> Result<serde_json::Value, String> {
        let path = format!("{}{path}", self.base);
        let answer = self.call(Method::GET, &path, &[], Vec::new()).await?;
        if !answer.status.is_success() {
            return Err(format!(
                "GET {path} answered {}: {} {}",
                answer.status,
                answer.body["code"].as_str().unwrap_or_default(),
                answer.body["detail"].as_str().unwrap_or_default()
            ));
        }
        Ok(answer.body)
    }

    /// Whether `GET {base}{path}` finds something: true on 2xx, false on 404, an error on any other answer.
    pub async fn found(&mut self, path: &str) -> Result<bool, String> {
        let path = format!("{}{path}", self.base);
        let answer = self.call(Method::GET, &path, &[], Vec::new()).await?;
        match answer.status.as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            status => Err(format!(
                "GET {path} answered {status}: {} {}",
                answer.body["code"].as_str().unwrap_or_default(),
                answer.body["detail"].as_str().unwrap_or_default()
            )),
        }
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<crate::steps::Answer, String> {
        self.exchange
            .request(method, path, headers, body)
            .await
            .map_err(|e| format!("the request could not be built: {e}"))?
            .map_err(|e| match e {
                Some(e) => format!("the connection failed: {e}"),
                None => format!("no answer within {:?}", self.exchange.timeout),
            })
    }
}
