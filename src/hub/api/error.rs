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
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("MissingParameter.{param}"),
            format!("The input parameter \"{param}\" that is mandatory for processing this request is not supplied."),
        )
    }

    pub fn invalid(param: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("InvalidParameter.{param}"),
            format!("The specified parameter \"{param}\" is not valid: {why}"),
        )
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
        if e.is_busy() {
            tracing::warn!(error = %e, "database busy past its timeout");
            return Self::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "the hub's database is busy; retry later");
        }
        Self::internal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::store::StoreError;

    #[test]
    fn a_full_database_disk_is_503_even_inside_a_failed_batch() {
        let full = || StoreError::DiskFull(sqlx::Error::Protocol("database or disk is full".into()));
        for e in [full(), StoreError::Batch(std::sync::Arc::new(full()))] {
            let api = ApiError::from(e);
            assert_eq!(
                (api.status, api.code.as_str(), api.message.as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "the hub's database disk is full")
            );
        }
        let busy = ApiError::from(StoreError::Busy(sqlx::Error::PoolTimedOut));
        assert_eq!((busy.status, busy.message.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "the hub's database is busy; retry later"));
        let other = ApiError::from(StoreError::WriterStopped);
        assert_eq!(other.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
