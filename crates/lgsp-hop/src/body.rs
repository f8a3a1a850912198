//! The one body type inside the stack (requests and responses are streamed, never buffered by the proxy), and
//! reading a whole body within a limit, for the layers that must see all of it (packets, token requests).

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use lgsp_problem::Problem;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body into [`Body`].
pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `body` as it streams, holding `guard` until the body has ended or is dropped (an upstream connection's slot stays
/// taken until its answer is read).
pub fn holding<G: Send + Unpin + 'static>(body: Body, guard: G) -> Body {
    boxed(Passed {
        head: None,
        body,
        _guard: guard,
    })
}

/// `head`, then the rest of `body` as it streams: an answer partly read already, passed on whole.
pub fn prefixed(head: Bytes, body: Body) -> Body {
    boxed(Passed {
        head: Some(head),
        body,
        _guard: (),
    })
}

/// A body passed on: what was read of it already first, and something held until it ends.
struct Passed<G> {
    head: Option<Bytes>,
    body: Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for Passed<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(head) = this.head.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(head))));
        }
        std::pin::Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        // A body partly read already says nothing of its length (its rest's hint may still count what was read).
        match self.head {
            Some(_) => http_body::SizeHint::default(),
            None => self.body.size_hint(),
        }
    }
}

/// A body that could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("body could not be read: {0}")]
    Unreadable(String),
    #[error("body not received whole within {after:?}")]
    Timeout { after: std::time::Duration },
}

impl BodyError {
    /// What a failed read of a request body means: its deadline passed, or it broke.
    pub fn from_read(e: &(dyn std::error::Error + 'static)) -> BodyError {
        match body_timeout(e) {
            Some(t) => BodyError::Timeout { after: t.after },
            None => BodyError::Unreadable(e.to_string()),
        }
    }
}

/// A request body that did not arrive whole within `body_read_timeout` of its head.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive whole within {after:?}")]
pub struct BodyTimeout {
    pub after: std::time::Duration,
}

/// The [`BodyTimeout`] at the root of `e`, if any (a forwarded body's timeout reaches the
/// proxy wrapped in the client's errors).
pub fn body_timeout<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimeout> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<BodyTimeout>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

impl Problem for BodyError {
    fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Unreadable(_) => StatusCode::BAD_REQUEST,
            BodyError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "packet.too_large",
            BodyError::Unreadable(_) => "packet.unreadable",
            BodyError::Timeout { .. } => "packet.body_timeout",
        }
    }

    fn detail(&self) -> String {
        match self {
            BodyError::TooLarge { limit } => format!(
                "The body exceeds this route's limit of {limit} bytes; split the batch into smaller packets."
            ),
            BodyError::Unreadable(e) => {
                format!("The body could not be read whole ({e}); send it again.")
            }
            BodyError::Timeout { after } => format!(
                "The body did not arrive whole within {} of the request head (body_read_timeout); send it again \
                 over a faster link, or in smaller packets.",
                lgsp_config::human(*after)
            ),
        }
    }
}

/// The `Content-Length` the client declared, if any.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads the whole body within `limit`, refusing as soon as it grows past it.
pub async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::from_read(&*e))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_is_read_whole_within_its_limit_and_refused_past_it() {
        assert_eq!(read_body(full("abc"), 3).await.unwrap(), "abc");
        let e = read_body(full("abcd"), 3).await.unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::PAYLOAD_TOO_LARGE, "packet.too_large")
        );
        let broken = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok(http_body::Frame::data(Bytes::from_static(b"a"))),
            Err::<http_body::Frame<Bytes>, BoxError>("reset by peer".into()),
        ]));
        let e = read_body(boxed(broken), 10).await.unwrap_err();
        assert_eq!(e.code(), "packet.unreadable");
        assert!(e.detail().contains("reset by peer"), "{}", e.detail());
    }

    #[test]
    fn declared_lengths_are_read_when_they_are_numbers() {
        let mut h = HeaderMap::new();
        assert_eq!(declared_length(&h), None);
        h.insert(header::CONTENT_LENGTH, "12".parse().unwrap());
        assert_eq!(declared_length(&h), Some(12));
        h.insert(header::CONTENT_LENGTH, "twelve".parse().unwrap());
        assert_eq!(declared_length(&h), None);
    }
}
