//! The check in front of every gRPC call: the bearer token's role against what the method
//! needs ([`required_role`]). A refused call never reaches a service.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};

use super::{Tokens, required_role};

/// A `tower` layer for the hub's gRPC server.
#[derive(Debug, Clone)]
pub struct AccessLayer {
    tokens: Option<Arc<Tokens>>,
}

impl AccessLayer {
    /// `None`: every call is let through (a hub started with `--no-auth`).
    pub fn new(tokens: Option<Arc<Tokens>>) -> Self {
        AccessLayer { tokens }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S, B> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(tokens) = &self.tokens
            && let Err(status) = admit(tokens, &request)
        {
            return Either::Left(ready(Ok(status.into_http())));
        }
        Either::Right(self.inner.call(request))
    }
}

fn admit<B>(tokens: &Tokens, request: &http::Request<B>) -> Result<(), tonic::Status> {
    let path = request.uri().path();
    let Some(needed) = required_role(path) else {
        return Ok(());
    };
    let Some(header) = request.headers().get(http::header::AUTHORIZATION) else {
        return Err(tonic::Status::unauthenticated(
            "this call needs an API token: set EDGESHIP_TOKEN (edgeship token create)",
        ));
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .as_bytes()
                .eq_ignore_ascii_case(b"bearer")
                .then_some(token.trim())
        })
        .ok_or_else(|| {
            tonic::Status::unauthenticated("the authorization header must be `Bearer <token>`")
        })?;
    let role = tokens
        .role_of(token)
        .ok_or_else(|| tonic::Status::unauthenticated("unknown or deleted API token"))?;
    if role < needed {
        return Err(tonic::Status::permission_denied(format!(
            "{} needs the {needed} role; this token is a {role}",
            path.trim_start_matches('/')
        )));
    }
    Ok(())
}
