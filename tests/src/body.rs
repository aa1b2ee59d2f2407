//! HTTP bodies shared by the local services and the callers: small ones in
//! memory, large ones streamed from the [`crate::pattern`].

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::Frame;

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type of the harness.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body held in memory.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// No body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// The first `total` bytes of the pattern, streamed chunk by chunk.
pub fn pattern(total: u64) -> Body {
    let frames = crate::pattern::stream(total).map(|c| Ok::<_, BoxError>(Frame::data(c)));
    http_body_util::BodyExt::boxed(StreamBody::new(frames))
}
