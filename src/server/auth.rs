//! The bearer token that write endpoints require: a layer put on every route that may
//! make the agent act (the Alertmanager webhook, pause/resume, breaker resets and approvals), so a new write endpoint is
//! guarded by being added to the same router, not by remembering a check.
//!
//! With no token configured, only clients on this host pass: `check` refuses such a
//! config on an address that is not loopback, and this layer also refuses remote
//! peers should a listener so bound be handed over.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::config::{is_loopback, ApiToken};
use crate::metrics::{HttpRejection, Metrics};

/// What [`require_token`] checks against.
#[derive(Clone, Debug)]
pub struct Guard {
    token: Option<ApiToken>,
    metrics: Arc<Metrics>,
    /// Refusals are logged at most once per [`LOG_EVERY`], with how many were not.
    log: Arc<Throttle>,
}

/// The shortest gap between two log lines about refused requests: a client guessing
/// tokens must not flood the journal.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Guard {
    /// A guard for `token` (`None`: loopback clients only).
    pub fn new(token: Option<ApiToken>, metrics: Arc<Metrics>) -> Self {
        Guard {
            token,
            metrics,
            log: Arc::default(),
        }
    }

    /// Whether a request from `peer` with these credentials may pass; the reason if not.
    fn admit(
        &self,
        authorization: Option<&HeaderValue>,
        peer: Option<SocketAddr>,
    ) -> Result<(), Refusal> {
        match &self.token {
            Some(token) => match authorization.map(|v| bearer(v.as_bytes())) {
                None => Err(Refusal::Missing),
                Some(Some(presented)) if token.matches(presented) => Ok(()),
                Some(_) => Err(Refusal::Wrong),
            },
            None if peer.is_some_and(|p| is_loopback(p.ip())) => Ok(()),
            None => Err(Refusal::Remote),
        }
    }
}

/// Why a request was refused; never carries what the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Bearer <the token>`.
    Wrong,
    /// No token is configured and the client is not on this host.
    Remote,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "no bearer token",
            Refusal::Wrong => "wrong bearer token",
            Refusal::Remote => "no API token is configured: only clients on this host may post",
        }
    }
}

/// The credentials of an `Authorization: Bearer <credentials>` header (the scheme is
/// case-insensitive), or `None` for another scheme.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(rest.trim_ascii())
}

/// The layer: passes the request on, or answers 401 with `WWW-Authenticate: Bearer`.
pub async fn require_token(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let refusal = match guard.admit(request.headers().get(header::AUTHORIZATION), peer) {
        Ok(()) => return next.run(request).await,
        Err(r) => r,
    };
    guard.metrics.http().rejected(HttpRejection::Unauthorized);
    if let Some(unlogged) = guard.log.ready(LOG_EVERY) {
        // The peer and the path, never the header: a wrong token may be a real one mistyped.
        let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        tracing::warn!(
            peer = %peer,
            path = %request.uri().path(),
            reason = refusal.as_str(),
            refused_since_last_line = unlogged,
            "request refused: 401"
        );
    }
    let challenge = match refusal {
        Refusal::Wrong => r#"Bearer realm="homeostat", error="invalid_token""#,
        Refusal::Missing | Refusal::Remote => r#"Bearer realm="homeostat""#,
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
        format!("{}\n", refusal.as_str()),
    )
        .into_response()
}

/// Lets an event be logged at most once per interval and counts the ones that were not.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    /// `Some(events not logged since the last line)` when a line may be written now.
    pub(crate) fn ready(&self, every: Duration) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, unlogged) = &mut *state;
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < every) {
            *unlogged += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(token: Option<&str>) -> Guard {
        Guard::new(
            token.map(|t| ApiToken::new(t).unwrap()),
            Arc::new(Metrics::new(Duration::from_secs(60))),
        )
    }

    const TOKEN: &str = "an-api-token-of-some-length";

    #[test]
    fn a_token_passes_only_as_bearer_credentials() {
        let g = guard(Some(TOKEN));
        let remote = Some(SocketAddr::from(([10, 0, 0, 1], 1)));
        let header = |s: &str| HeaderValue::from_str(s).unwrap();
        for ok in [
            format!("Bearer {TOKEN}"),
            format!("bearer {TOKEN}"),
            format!("BEARER  {TOKEN} "),
        ] {
            assert_eq!(g.admit(Some(&header(&ok)), remote), Ok(()), "{ok}");
        }
        assert_eq!(g.admit(None, remote), Err(Refusal::Missing));
        for wrong in [
            format!("Basic {TOKEN}"),
            format!("Bearer {TOKEN}x"),
            format!("Bearer{TOKEN}"),
            "Bearer".to_string(),
            "Bearer ".to_string(),
            TOKEN.to_string(),
        ] {
            assert_eq!(
                g.admit(Some(&header(&wrong)), remote),
                Err(Refusal::Wrong),
                "{wrong}"
            );
        }
    }

    #[test]
    fn without_a_token_only_clients_on_this_host_pass() {
        let g = guard(None);
        let at = |ip: [u8; 4]| Some(SocketAddr::from((ip, 1)));
        assert_eq!(g.admit(None, at([127, 0, 0, 1])), Ok(()));
        let mapped = "[::ffff:127.0.0.1]:1".parse().ok();
        assert_eq!(g.admit(None, mapped), Ok(()));
        assert_eq!(g.admit(None, at([192, 168, 1, 2])), Err(Refusal::Remote));
        assert_eq!(g.admit(None, None), Err(Refusal::Remote), "peer unknown");
    }

    #[tokio::test(start_paused = true)]
    async fn the_throttle_counts_what_it_did_not_log() {
        let t = Throttle::default();
        assert_eq!(t.ready(LOG_EVERY), Some(0));
        assert_eq!(t.ready(LOG_EVERY), None);
        assert_eq!(t.ready(LOG_EVERY), None);
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(t.ready(LOG_EVERY), Some(2));
    }
}
