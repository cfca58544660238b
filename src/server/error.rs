//! The API's one error type and the helpers every handler module shares:
//! [`ApiError`] (status, machine code, message naming what is at fault;
//! serialized as `{"error": {"code", "message"}}`), [`blocking`] (queue and
//! store work off the async threads) and [`parse`] (a JSON request body).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use crate::api::{ErrorBody, ErrorDetail};
use crate::queue::{LogError, QueueError};

/// An API error: status, machine code and a message naming what is at fault.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> ApiError {
        let (status, code) = match &e {
            QueueError::UnknownJob(_) => (StatusCode::NOT_FOUND, "not_found"),
            QueueError::Spec(_)
            | QueueError::UnknownDependency(_)
            | QueueError::UnknownCluster { .. }
            | QueueError::BadCursor { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            QueueError::TooManyJobs { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            QueueError::BadState { .. } => (StatusCode::CONFLICT, "conflict"),
            QueueError::StaleAttempt => (StatusCode::CONFLICT, "stale_attempt"),
            QueueError::Db(_) => {
                tracing::error!(error = %e, "queue database error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> ApiError {
        match &e {
            LogError::Gap { .. } => ApiError::new(StatusCode::CONFLICT, "log_gap", e.to_string()),
            LogError::Io { .. } => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Run queue work off the async threads.
pub(crate) async fn blocking<S: Send + Sync + 'static, T: Send + 'static>(
    c: &Arc<S>,
    f: impl FnOnce(&S) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let c = c.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .map_err(|e| ApiError::internal(format!("handler panicked: {e}")))?
}

pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid request body: {e}")))
}

/// An agent name in a path: 1-64 letters, digits, `.`, `_` or `-`.
pub(crate) fn valid_agent_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "invalid agent name {name:?}: use 1-64 letters, digits, '.', '_' or '-'"
        )))
    }
}
