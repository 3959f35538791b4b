//! Refusals shared by both REST dialects (the store is busy, the app's
//! REST budget is spent), each rendered in the dialect of the route that
//! refuses: a Pusher HTTP API route answers `{"error", "code"}` as the
//! Pusher SDKs read it, a Pushi route answers Pushi's
//! `{"result": "error", "name", "message", "code"}`. The two shapes are
//! separate types ([`PusherError`], [`PushiError`]) so a route cannot
//! answer in the other's.

use serde_json::json;

use crate::http::Response;

/// A refusal not yet rendered in a dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Pushi's error `name`.
    pub name: &'static str,
    /// What happened and what to do.
    pub message: String,
    /// Seconds to wait (`Retry-After`), when waiting helps.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// The store's queue is full: nothing was accepted, the client may retry.
    pub fn store_busy() -> ApiError {
        ApiError {
            status: 503,
            name: "StoreBusy",
            message: "the store is busy; nothing was accepted, retry shortly".into(),
            retry_after: Some(1),
        }
    }

    /// The app's REST budget (`PUSHI_API_RATE`) is spent.
    pub fn rate_limited(wait: u64) -> ApiError {
        ApiError {
            status: 429,
            name: "RateLimited",
            message: "too many API calls for this app; slow down (PUSHI_API_RATE)".into(),
            retry_after: Some(wait.max(1)),
        }
    }

    fn with_retry(&self, mut r: Response) -> Response {
        if let Some(wait) = self.retry_after {
            r.headers.push(("Retry-After", wait.to_string()));
        }
        r
    }
}

/// An error answer of the Pusher HTTP API: `{"error": message, "code": status}`.
#[derive(Debug)]
pub struct PusherError(pub Response);

impl PusherError {
    /// A Pusher API error with this status.
    pub fn new(status: u16, message: &str) -> PusherError {
        PusherError(Response::error(status, message))
    }
}

impl From<ApiError> for PusherError {
    fn from(e: ApiError) -> PusherError {
        PusherError(e.with_retry(Response::error(e.status, &e.message)))
    }
}

/// An error answer of Pushi's REST API: `{"result": "error", "name", "message", "code"}`.
#[derive(Debug)]
pub struct PushiError(pub Response);

impl PushiError {
    /// A Pushi API error with this status and error name.
    pub fn new(status: u16, name: &str, message: &str) -> PushiError {
        PushiError(Response::json(
            status,
            &json!({ "result": "error", "name": name, "message": message, "code": status }),
        ))
    }
}

impl From<ApiError> for PushiError {
    fn from(e: ApiError) -> PushiError {
        let r = PushiError::new(e.status, e.name, &e.message).0;
        PushiError(e.with_retry(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn each_dialect_renders_its_own_shape() {
        let pusher = PusherError::from(ApiError::store_busy()).0;
        assert_eq!(pusher.status, 503);
        assert!(body(&pusher).get("result").is_none() && body(&pusher)["code"] == 503);
        let pushi = PushiError::from(ApiError::rate_limited(3)).0;
        assert_eq!(body(&pushi)["result"], "error");
        assert_eq!(body(&pushi)["name"], "RateLimited");
        assert!(pushi.headers.contains(&("Retry-After", "3".to_string())));
    }
}
