//! Who is calling: every request but the public ones presents a key, as
//! `Authorization: Bearer <key>` or, for clients that cannot send a header,
//! as the first segment of a capability path `/k/<key>/...`.
//!
//! Keys never reach a log or an answer: [`redact`] takes them out of paths.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use faas_orchestrator::Orchestrator;

use crate::{ApiError, GatewayConfig, Refusal};

/// What `/healthz` and the log say when authentication is off.
pub const NO_AUTH_WARNING: &str =
    "authentication is off (--insecure-no-auth): anyone who can reach this port controls every function";

/// The path with the key of a capability path replaced by `<key>`.
pub fn redact(path: &str) -> String {
    match path.strip_prefix("/k/") {
        Some(rest) => match rest.split_once('/') {
            Some((_, tail)) => format!("/k/<key>/{tail}"),
            None => "/k/<key>".to_string(),
        },
        None => path.to_string(),
    }
}

/// The key of a capability path.
fn capability(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/k/")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Middleware: authenticate the caller and hand it to the handler as an
/// `Extension<Caller>`; answer 401 without calling the handler when the key
/// is missing, malformed, unknown or revoked. A policy's refusal in the
/// handler's answer (a missing scope, a quota) goes to the audit log.
pub async fn authenticate(
    State((orchestrator, config)): State<(Arc<Orchestrator>, GatewayConfig)>,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut().insert(config);
    let path = req.uri().path();
    if path == "/healthz" || (path == "/metrics" && config.metrics_public) {
        return next.run(req).await;
    }
    let token = capability(path).or_else(|| bearer(req.headers()));
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let caller = match orchestrator.authenticate(token, source).await {
        Ok(caller) => caller,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let request = format!("{} {}", req.method(), redact(path));
    req.extensions_mut().insert(caller.clone());
    let response = next.run(req).await;
    if let Some(Refusal(why)) = response.extensions().get::<Refusal>() {
        orchestrator.audit_refusal(&caller, &request, why).await;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_leave_paths() {
        assert_eq!(redact("/k/faas_abc_def/job/3"), "/k/<key>/job/3");
        assert_eq!(redact("/k/faas_abc_def"), "/k/<key>");
        assert_eq!(redact("/functions/f"), "/functions/f");
        assert_eq!(capability("/k/faas_a_b/job/1"), Some("faas_a_b"));
        assert_eq!(capability("/job/1"), None);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer  tok ".parse().unwrap());
        assert_eq!(bearer(&h), Some("tok"));
        h.insert(header::AUTHORIZATION, "Basic dXNlcg==".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
