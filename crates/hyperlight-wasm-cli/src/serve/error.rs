//! What a failed request answers: a kind, its HTTP status, and a message,
//! as `{"error": {"kind": ..., "message": ...}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyperlight_wasm::{CancelReason, Error};

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The body, the arguments or the signature are not usable (400).
    BadRequest,
    /// No such module, function or route (404).
    NotFound,
    /// The route does not take this method (405).
    MethodNotAllowed,
    /// The body is over `--max-body-size` (413).
    PayloadTooLarge,
    /// The module has as many calls as it admits (503).
    Overloaded,
    /// The server is shutting down (503).
    Unavailable,
    /// The call was cancelled through its interrupt handle (503).
    Cancelled,
    /// The call ran past `--timeout` (504).
    Timeout,
    /// The guest trapped, exited, ran out of memory or misbehaved (500).
    GuestFault,
    /// Anything else (500).
    Internal,
}

impl ErrorKind {
    /// The HTTP status it answers.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Overloaded | ErrorKind::Unavailable | ErrorKind::Cancelled => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::GuestFault | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Its name in the JSON body.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "shutting_down",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Timeout => "timeout",
            ErrorKind::GuestFault => "guest_fault",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// Why.
    pub kind: ErrorKind,
    /// What happened, with its causes.
    pub message: String,
}

impl CallError {
    /// A failure of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CallError {
        CallError {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.message)
    }
}

impl std::error::Error for CallError {}

/// The message of an error and its causes, joined by `: `.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let parts: Vec<String> = crate::causes(error).map(ToString::to_string).collect();
    parts.join(": ")
}

impl From<Error> for CallError {
    fn from(error: Error) -> CallError {
        let kind = match &error {
            Error::GuestFunctionNotFound { .. } => ErrorKind::NotFound,
            Error::GuestFunctionParameterCountMismatch { .. }
            | Error::GuestFunctionParameterTypeMismatch { .. }
            | Error::GuestFunctionReturnTypeMismatch { .. }
            | Error::MissingExport { .. } => ErrorKind::BadRequest,
            Error::RequestTooLarge { .. } => ErrorKind::PayloadTooLarge,
            Error::ExecutionCancelledByHost {
                reason: CancelReason::TimeLimit(_),
            } => ErrorKind::Timeout,
            Error::ExecutionCancelledByHost { .. } => ErrorKind::Cancelled,
            Error::GuestTrap { .. }
            | Error::GuestExited { .. }
            | Error::GuestOutOfMemory { .. }
            | Error::GuestFailed { .. }
            | Error::GuestAborted { .. }
            | Error::GuestException(_)
            | Error::TripleFault { .. }
            | Error::GuestMemoryViolation { .. }
            | Error::BadGuestPointer { .. }
            | Error::InvalidUtf8 { .. }
            | Error::Protocol(_)
            | Error::UnexpectedExit { .. } => ErrorKind::GuestFault,
            _ => ErrorKind::Internal,
        };
        CallError::new(kind, chain(&error))
    }
}

impl IntoResponse for CallError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {"kind": self.kind.name(), "message": self.message}
        });
        (self.kind.status(), axum::Json(body)).into_response()
    }
}
