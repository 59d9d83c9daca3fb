//! [`C3Body`]: the response body of a cached service — either a stored body
//! served from the cache, or the inner service's body streamed through while
//! (optionally) being captured for storage, up to a size limit.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;

pin_project! {
    /// The body of responses from [`C3Cache`](super::C3Cache).
    pub struct C3Body<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Full { data: Option<Bytes> },
        Inner {
            #[pin]
            body: B,
            capture: Option<Capture>,
        },
    }
}

/// Collects a streamed body for the cache. Dropped (and so abandoned) when the
/// body exceeds the limit, fails, or is not read to the end; then the
/// receiver sees the sender go away and nothing is stored.
pub(crate) struct Capture {
    buf: BytesMut,
    limit: usize,
    done: oneshot::Sender<Bytes>,
}

impl Capture {
    pub(crate) fn new(limit: usize) -> (Capture, oneshot::Receiver<Bytes>) {
        let (done, rx) = oneshot::channel();
        (
            Capture {
                buf: BytesMut::new(),
                limit,
                done,
            },
            rx,
        )
    }

    fn finish(self) {
        let _ = self.done.send(self.buf.freeze());
    }
}

impl<B> C3Body<B> {
    pub(crate) fn full(data: Bytes) -> Self {
        C3Body {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn empty() -> Self {
        C3Body {
            kind: Kind::Full { data: None },
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        C3Body {
            kind: Kind::Inner {
                body,
                capture: None,
            },
        }
    }
}

impl<B: Body> C3Body<B> {
    pub(crate) fn capturing(body: B, capture: Capture) -> Self {
        // An empty body may never be polled at all (hyper checks
        // is_end_stream first), so it is complete right away.
        let capture = if body.is_end_stream() {
            capture.finish();
            None
        } else {
            Some(capture)
        };
        C3Body {
            kind: Kind::Inner { body, capture },
        }
    }
}

impl<B> Body for C3Body<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Inner { mut body, capture } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref()
                            && let Some(c) = capture.as_mut()
                        {
                            if c.buf.len() + d.len() > c.limit {
                                // Too big to store: stream the rest through.
                                *capture = None;
                            } else {
                                c.buf.extend_from_slice(d);
                            }
                        }
                        // The reader may stop polling once the body says it is
                        // done, so completion is detected here, not only at None.
                        if body.is_end_stream()
                            && let Some(c) = capture.take()
                        {
                            c.finish();
                        }
                    }
                    Some(Err(_)) => *capture = None,
                    None => {
                        if let Some(c) = capture.take() {
                            c.finish();
                        }
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Inner { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Inner { body, .. } => body.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for C3Body<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full { data } => f
                .debug_struct("C3Body::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Inner { capture, .. } => f
                .debug_struct("C3Body::Inner")
                .field("capturing", &capture.is_some())
                .finish(),
        }
    }
}
