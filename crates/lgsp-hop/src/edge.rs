//! The error edge: the one place a failure becomes an answer. It asks the error to describe itself
//! ([`Problem`]) — status, code, class, detail, headers, violations — and logs it by class; it knows no error type.

use http::Response;
use lgsp_problem::{Class, Problem};

use crate::body::{Body, full};

/// The problem+json answer of hop `hop` to request `message_id`, logged as the class of the failure says.
pub fn answer(problem: &dyn Problem, hop: &str, message_id: &str) -> Response<Body> {
    let code = problem.code();
    match problem.class() {
        Class::Client => tracing::info!(code, error = %problem, "refused"),
        Class::Upstream => tracing::warn!(code, error = %problem, "upstream failed"),
        Class::Gateway => tracing::error!(code, error = %problem, "gateway error"),
    }
    lgsp_problem::response(problem, hop, Some(message_id)).map(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use http_body_util::BodyExt;
    use lgsp_problem::{BoxProblem, Internal};

    async fn document(resp: Response<Body>) -> serde_json::Value {
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn every_error_answers_for_itself() {
        let cases: Vec<(BoxProblem, StatusCode, &str, &str)> = vec![
            (
                crate::route::RouteError::NotFound { path: "/x".into() }.into(),
                StatusCode::NOT_FOUND,
                "route.not_found",
                "client",
            ),
            (
                crate::body::BodyError::TooLarge { limit: 1 }.into(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "packet.too_large",
                "client",
            ),
            (
                lgsp_auth::AuthError::MissingKey.into(),
                StatusCode::UNAUTHORIZED,
                "auth.missing_key",
                "client",
            ),
            (
                Internal("test".into()).into(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "gateway.internal",
                "gateway",
            ),
        ];
        for (problem, status, code, class) in cases {
            let resp = answer(&*problem, "lgsp", "0190a5a4-0000-7000-8000-000000000002");
            assert_eq!(resp.status(), status);
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
            let doc = document(resp).await;
            assert_eq!(
                (doc["code"].as_str(), doc["class"].as_str()),
                (Some(code), Some(class))
            );
            assert_eq!(doc["hop"], "lgsp");
            assert_eq!(doc["message_id"], "0190a5a4-0000-7000-8000-000000000002");
        }
    }

    #[tokio::test]
    async fn a_problems_headers_and_violations_reach_the_answer() {
        let method = crate::route::RouteError::MethodNotAllowed {
            route: "r".into(),
            method: "DELETE".into(),
            allow: "POST, PUT".into(),
        };
        let resp = answer(&method, "lgsp", "id");
        assert_eq!(resp.headers()["allow"], "POST, PUT");
        let packet = crate::packet::PacketError::Invalid {
            violations: vec![lgsp_problem::Violation {
                path: "/HoSoCBCCVC/HoVaTen".into(),
                line: Some(5),
                column: Some(3),
                rule: "xsd.min_length",
                message: "too short".into(),
            }],
            truncated: false,
        };
        let doc = document(answer(&packet, "lgsp", "id")).await;
        assert_eq!(doc["status"], 422);
        assert_eq!(doc["errors"][0]["rule"], "xsd.min_length");
        assert_eq!(doc["errors"][0]["line"], 5);
    }
}
