//! The future every layer of the stack returns: the answer is known at once (a refusal, or the layer's own
//! response), or the inner service's future runs unboxed, or — only where a layer must wait before it can decide
//! (reading a body, a shared rate-limit store, the token endpoint) — one boxed future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use lgsp_problem::BoxProblem;

use crate::body::Body;

pub type Answer = Result<Response<Body>, BoxProblem>;

/// The rest of the stack below a layer that may wait before it calls it: a service the layer can clone and move,
/// ready, into its waiting work.
pub trait Next:
    tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = BoxProblem,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Next for S where
    S: tower::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = BoxProblem,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

pin_project_lite::pin_project! {
    #[project = StepProj]
    pub enum Step<F> {
        /// Answered here.
        Done { answer: Option<Answer> },
        /// Passed on to the inner service.
        Inner { #[pin] fut: F },
        /// Work that waits before it answers or passes on.
        Waiting { fut: BoxFuture<'static, Answer> },
    }
}

impl<F> Step<F> {
    pub fn done(answer: Answer) -> Self {
        Step::Done {
            answer: Some(answer),
        }
    }

    pub fn refuse(problem: impl Into<BoxProblem>) -> Self {
        Step::done(Err(problem.into()))
    }

    pub fn inner(fut: F) -> Self {
        Step::Inner { fut }
    }

    pub fn wait(fut: impl Future<Output = Answer> + Send + 'static) -> Self {
        Step::Waiting { fut: Box::pin(fut) }
    }
}

impl<F: Future<Output = Answer>> Future for Step<F> {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match self.project() {
            StepProj::Done { answer } => Poll::Ready(answer.take().unwrap_or_else(|| {
                Err(lgsp_problem::Internal("a layer's answer was polled twice".into()).into())
            })),
            StepProj::Inner { fut } => fut.poll(cx),
            StepProj::Waiting { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// The inner service's future, boxed, for a layer's waiting work to await. Holding the generic future itself
/// across an `.await` trips a compiler limitation (the `Send` of an async block is checked "for any lifetime" of
/// the body's boxed error type, which the projection `S::Future` cannot show); boxed, it is one concrete type.
/// Only the waiting paths pay for it.
pub fn unnamed<F>(fut: F) -> BoxFuture<'static, Answer>
where
    F: Future<Output = Answer> + Send + 'static,
{
    Box::pin(fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Never = std::future::Pending<Answer>;

    #[tokio::test]
    async fn each_kind_of_step_answers() {
        let done: Step<Never> = Step::done(Ok(Response::new(crate::body::empty())));
        assert_eq!(done.await.unwrap().status(), 200);
        let refused: Step<Never> = Step::refuse(lgsp_problem::Internal("x".into()));
        assert_eq!(refused.await.unwrap_err().code(), "gateway.internal");
        let inner = Step::inner(std::future::ready(Ok(Response::new(crate::body::empty()))));
        assert!(inner.await.is_ok());
        let waited: Step<Never> = Step::wait(async {
            tokio::task::yield_now().await;
            Ok(Response::new(crate::body::empty()))
        });
        assert!(waited.await.is_ok());
    }
}
