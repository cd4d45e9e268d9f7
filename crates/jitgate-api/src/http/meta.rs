//! Probes, metrics, and what a caller may see of the gateway: whoami, resources, where the
//! front ends listen, the CA to pin.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::{Caller, Cp};
use crate::error::ApiError;
use crate::wire;

pub(super) async fn readyz(State(cp): Cp) -> impl IntoResponse {
    if cp.drain().unready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: this gateway is stopping\n".to_string(),
        );
    }
    let health = cp.store().health().await;
    cp.metrics().store_up.set(i64::from(health.is_ok()));
    match health {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store unavailable: {e}\n")),
    }
}

pub(super) async fn metrics(State(cp): Cp) -> impl IntoResponse {
    cp.refresh_gauges().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        cp.metrics().render(),
    )
}

/// `jitgate drain [--undo]`: this replica only (each replica is drained on its own).
pub(super) async fn drain(
    State(cp): Cp,
    Caller(who): Caller,
    b: Result<Json<wire::Drain>, axum::extract::rejection::JsonRejection>,
) -> crate::error::ApiResult<Json<wire::Drained>> {
    let b = super::body(b)?;
    let sessions = cp.set_drain(&who, b.draining).await?;
    Ok(Json(wire::Drained {
        draining: b.draining,
        sessions,
    }))
}

pub(super) async fn whoami(State(cp): Cp, Caller(who): Caller) -> Json<wire::WhoAmI> {
    Json(cp.whoami(&who))
}

pub(super) async fn resources(State(cp): Cp, Caller(who): Caller) -> Json<Vec<wire::ResourceView>> {
    Json(cp.resources(&who))
}

/// Where the front ends listen, their host key and CA (as `serve` announced them).
pub(super) async fn info(State(cp): Cp, Caller(_who): Caller) -> impl IntoResponse {
    let mut v = cp.frontends();
    v["version"] = serde_json::Value::String(env!("CARGO_PKG_VERSION").to_string());
    Json(v)
}

/// The CA the front ends' certificate chains to, for clients to pin (public: a CA certificate
/// is no secret, and a client that fetched it unverified checks it against a fingerprint it was
/// given before trusting it). 404 when the certificate is publicly trusted.
pub(super) async fn tls_ca(State(cp): Cp) -> axum::response::Response {
    let v = cp.frontends();
    match v["tls_ca"].as_str() {
        Some(pem) => Json(wire::TlsCa {
            pem: pem.to_string(),
            sha256: v["tls_ca_sha256"].as_str().map(str::to_string),
            names: v["tls_names"]
                .as_array()
                .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
        })
        .into_response(),
        None => ApiError::not_found(
            "this gateway presents a publicly trusted certificate (no CA to pin): clients use the system roots",
        )
        .into_response(),
    }
}
