//! Routes whose upstream is a broker (`nats://…`, `amqp://…`): [`Forward`](crate::forward::Forward) hands their
//! packets here. The packet is published with its hop headers and message id, and the caller — or the outbox, for a
//! queued route — hears 202 with the broker's confirmation only once the broker has confirmed; a failure is a 502
//! (504 on timeout) that the outbox retries like an HTTPS upstream's.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use lgsp_broker::{Brokers, ClientIdentity, Confirmed, Publication};
use lgsp_config::{Broker, RouteConfig, Upstream};
use lgsp_problem::BoxProblem;
use prometheus::{Histogram, IntCounter};

use crate::error::BrokerFailed;
use lgsp_hop::HopContext;
use lgsp_hop::body::{Body, full, read_body};
use lgsp_hop::headers;
use lgsp_hop::route::Route;

/// `lgsp_broker_publish_total` and `lgsp_broker_confirm_seconds` of one route's broker target.
struct TargetMetrics {
    /// By [`lgsp_broker::OUTCOMES`] position.
    outcomes: Vec<IntCounter>,
    confirm: Histogram,
}

impl TargetMetrics {
    fn new(hop: &HopContext, route: &str, broker: &Broker) -> TargetMetrics {
        let labels = |outcome| {
            hop.metrics.broker_publish.with_label_values(&[
                hop.name.as_ref(),
                route,
                broker.kind(),
                outcome,
            ])
        };
        TargetMetrics {
            outcomes: lgsp_broker::OUTCOMES.iter().map(|o| labels(o)).collect(),
            confirm: hop.metrics.broker_confirm.with_label_values(&[
                hop.name.as_ref(),
                route,
                broker.kind(),
            ]),
        }
    }

    fn count(&self, outcome: &str) {
        if let Some(i) = lgsp_broker::OUTCOMES.iter().position(|o| *o == outcome)
            && let Some(c) = self.outcomes.get(i)
        {
            c.inc();
        }
    }
}

/// A route's broker targets (production, trial), by [`Route::index`].
struct RouteMetrics {
    production: Option<TargetMetrics>,
    trial: Option<TargetMetrics>,
}

/// What a hop publishes with: its broker connections and client identity, and its metrics per route.
pub struct Publisher {
    hop: Arc<HopContext>,
    brokers: Brokers,
    identity: Option<ClientIdentity>,
    routes: Vec<RouteMetrics>,
}

/// The hop headers a packet carries onto the broker.
const CARRIED: [&str; 5] = [
    headers::MESSAGE_ID,
    headers::CLIENT,
    headers::HOPS,
    headers::MODE,
    headers::TRACEPARENT,
];

impl Publisher {
    pub fn new(
        hop: Arc<HopContext>,
        routes: &[RouteConfig],
        identity: Option<ClientIdentity>,
    ) -> Publisher {
        let metrics = |r: &RouteConfig, u: Option<&Upstream>| {
            u.and_then(|u| u.broker.as_ref())
                .map(|b| TargetMetrics::new(&hop, &r.name, b))
        };
        let routes = routes
            .iter()
            .map(|r| RouteMetrics {
                production: metrics(r, Some(&r.upstream)),
                trial: metrics(r, r.trial_upstream.as_ref()),
            })
            .collect();
        Publisher {
            hop,
            brokers: Brokers::new(),
            identity,
            routes,
        }
    }

    /// Publishes the prepared request (hop headers written) to `target`'s broker and answers 202 with the
    /// confirmation, or the failure.
    pub async fn publish(
        &self,
        route: &Route,
        target: &Upstream,
        trial: bool,
        req: Request<Body>,
    ) -> Result<Response<Body>, BoxProblem> {
        let Some(broker) = &target.broker else {
            return Err(
                lgsp_problem::Internal("publish reached for an https upstream".into()).into(),
            );
        };
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let deadline = tokio::time::Instant::now() + route.config.timeout;
        // The body was read and checked by the layers before; it is bounded again here all the same.
        let body = tokio::time::timeout_at(deadline, read_body(body, route.config.max_body_bytes))
            .await
            .map_err(|_| lgsp_hop::body::BodyError::Timeout {
                after: route.config.timeout,
            })??;
        let text = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let publication = Publication {
            message_id: text(headers::MESSAGE_ID).unwrap_or_default(),
            headers: CARRIED
                .iter()
                .filter_map(|n| text(n).map(|v| ((*n).to_owned(), v)))
                .collect(),
            content_type: text(header::CONTENT_TYPE.as_str()),
            body,
        };
        let message_id = publication.message_id.clone();
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let result = self
            .brokers
            .publish(
                &self.hop.name,
                self.identity.as_ref(),
                &target.authority,
                broker,
                publication,
                remaining,
            )
            .await;
        let metrics = self.routes.get(route.index).and_then(|m| {
            if trial {
                m.trial.as_ref()
            } else {
                m.production.as_ref()
            }
        });
        match result {
            Ok(confirmed) => {
                if let Some(m) = metrics {
                    m.count(if confirmed.duplicate {
                        "duplicate"
                    } else {
                        "confirmed"
                    });
                    m.confirm.observe(started.elapsed().as_secs_f64());
                }
                Ok(accepted(&message_id, &confirmed))
            }
            Err(error) => {
                if let Some(m) = metrics {
                    m.count(error.outcome());
                }
                Err(BrokerFailed {
                    route: route.name.clone(),
                    upstream: target.authority.clone(),
                    broker: broker.kind(),
                    error,
                }
                .into())
            }
        }
    }
}

impl Publisher {
    /// Answers an inbox route's request (`inbox.rs`) over this hop's broker connections.
    pub async fn inbox(
        &self,
        route: &Route,
        req: Request<Body>,
    ) -> Result<Response<Body>, BoxProblem> {
        crate::inbox::answer(
            &self.brokers,
            &self.hop.name,
            self.identity.as_ref(),
            route,
            req,
        )
        .await
    }
}

/// 202 with what the broker confirmed: the receipt the journal keeps for a broker delivery.
fn accepted(message_id: &str, c: &Confirmed) -> Response<Body> {
    let receipt = serde_json::json!({
        "message_id": message_id,
        "status": "published",
        "broker": c.broker,
        "destination": c.destination,
        "stream": c.stream,
        "sequence": c.sequence,
        "duplicate": c.duplicate,
    });
    let mut resp = Response::new(full(receipt.to_string()));
    *resp.status_mut() = StatusCode::ACCEPTED;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_answer_names_the_message_and_what_the_broker_confirmed() {
        let resp = accepted(
            "m-1",
            &Confirmed {
                broker: "nats",
                destination: "cbccvc.in".into(),
                stream: Some("CBCCVC".into()),
                sequence: Some(7),
                duplicate: false,
            },
        );
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let body = read_body(resp.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["message_id"], "m-1");
        assert_eq!(v["stream"], "CBCCVC");
        assert_eq!(v["sequence"], 7);
        assert_eq!(v["status"], "published");
    }
}
