//! The authentication layer: a tower [`Layer`] in front of every gRPC service.
//!
//! It reads the `authorization: Bearer <token>` metadata, looks the token up, and either calls
//! the service with the [`Caller`] in the request's extensions or answers at once:
//! `UNAUTHENTICATED` for a missing or unknown token, `PERMISSION_DENIED` naming the role needed
//! for a token whose role is too low. The health service is open. Without a tokens file every
//! caller is [`Caller::anonymous`] (the server only allows that on loopback or with
//! `--insecure-no-auth`).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::Status;
use tower::{Layer, Service};

use super::{Caller, method, tokens::Tokens};

/// Adds [`Auth`] around a service.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
}

impl AuthLayer {
    /// Checks tokens against `tokens`; `None` lets every caller in as [`Caller::anonymous`].
    pub fn new(tokens: Option<Arc<Tokens>>) -> Self {
        Self { tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, tokens: self.tokens.clone() }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S> Auth<S> {
    /// The caller of `request`, or the status that refuses it.
    fn authorize<B>(&self, request: &http::Request<B>) -> Result<Option<Caller>, Status> {
        let called = method(request.uri().path());
        let Some(needed) = called.role else { return Ok(None) };
        let Some(tokens) = &self.tokens else { return Ok(Some(Caller::anonymous())) };
        let token = bearer(request.headers()).ok_or_else(|| {
            Status::unauthenticated("missing bearer token: send `authorization: Bearer <token>` metadata")
        })?;
        let caller = tokens.authenticate(token).ok_or_else(|| Status::unauthenticated("unknown or revoked token"))?;
        if caller.role < needed {
            return Err(Status::permission_denied(format!(
                "{} needs role {needed}; token {:?} has role {}",
                called.method, caller.name, caller.role
            )));
        }
        Ok(Some(caller))
    }
}

/// The token of an `authorization: Bearer <token>` header (scheme case-insensitive, RFC 6750).
pub(crate) fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.authorize(&request) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                // The clone that was driven to readiness serves this call (tower's rule).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_per_rfc_6750() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("Basic abc", None),
            ("Bearer ", None),
            ("abc", None),
        ] {
            headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer(&headers), token, "{value}");
        }
    }
}
