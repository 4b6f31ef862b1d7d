//! `none`: accepts every request unchecked. Only an explicit `scheme = "none"` selects it,
//! and startup logs a warning for each such source; it exists for local testing.

use super::{Scheme, SignedRequest, Verified, VerifyError};
use std::time::SystemTime;

#[derive(Debug)]
pub struct NoVerification;

impl Scheme for NoVerification {
    fn verify(
        &self,
        _request: &SignedRequest<'_>,
        _now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        Ok(Verified::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn unsigned_request_accepted() {
        let headers = HeaderMap::new();
        let result = NoVerification.verify(&SignedRequest::new(&headers, b"{}"), SystemTime::now());
        assert_eq!(result, Ok(Verified::default()));
    }
}
