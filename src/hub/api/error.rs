//! Alibaba-style API errors: `{"RequestId","HostId","Code","Message","Recommend"}`
//! with the HTTP status Alibaba uses for that class of error.

use axum::http::StatusCode;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into() }
    }

    pub fn missing(param: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, format!("MissingParameter.{param}"), format!("The input parameter \"{param}\" that is mandatory for processing this request is not supplied."))
    }

    pub fn invalid(param: &str, why: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, format!("InvalidParameter.{param}"), format!("The specified parameter \"{param}\" is not valid: {why}"))
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("InvalidParameter.{what}"), format!("The specified {what} \"{id}\" does not exist."))
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error serving API request");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "The request processing has failed due to some unknown error.")
    }
}

impl From<crate::hub::store::StoreError> for ApiError {
    fn from(e: crate::hub::store::StoreError) -> Self {
        // A full disk is the operator's to fix and the caller's to retry
        // later: say so (503), not "unknown error".
        if e.is_disk_full() {
            tracing::error!(error = %e, "database disk full; refusing writes");
            return Self::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "the hub's database disk is full");
        }
        Self::internal(e)
    }
}
