//! The HTTP side: routes, request bodies to typed calls, results and
//! errors to JSON, and the request metrics.
//!
//! - `POST /v1/modules/{name}/call/{function}` with `{"args": [...]}` and
//!   optionally `"signature": {"params": [...], "result": "..."}`;
//! - `GET /metrics`: the Prometheus text exposition of the registry;
//! - `GET /healthz`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyperlight_wasm::{ParameterValue, ReturnType};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde::Deserialize;
use serde_json::Value as Json;

use super::error::{CallError, ErrorKind};
use super::pool::{Answer, CallArgs, ModulePool};
use crate::{component_json, values};

/// The call route, as the `route` label names it.
pub const CALL_ROUTE: &str = "/v1/modules/{name}/call/{function}";

/// HTTP request counts and durations, by route, method and status.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<HttpMetrics> {
        let labels = ["route", "method", "status"];
        let requests = IntCounterVec::new(
            Opts::new(
                "hyperlight_wasm_http_requests_total",
                "HTTP requests answered by `hyperlight-wasm serve`, by route, method and status",
            ),
            &labels,
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "hyperlight_wasm_http_request_duration_seconds",
                "Time from a request's arrival to its response, by route, method and status",
            )
            .buckets(vec![
                0.000_05, 0.0001, 0.000_25, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &labels,
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(HttpMetrics { requests, duration })
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The modules, by name.
    pub modules: HashMap<String, ModulePool>,
    /// Where `/metrics` reads from.
    pub registry: Registry,
    /// The request metrics.
    pub metrics: HttpMetrics,
}

/// The router, with a body limit of `max_body_size` bytes.
pub fn router(state: Arc<AppState>, max_body_size: usize) -> Router {
    Router::new()
        .route(CALL_ROUTE, post(call))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            track,
        ))
        .layer(DefaultBodyLimit::max(max_body_size))
        .with_state(state)
}

/// The `route` label of a path: one of the routes, or `other` (so that
/// clients cannot grow the label set).
fn route_of(path: &str) -> &'static str {
    match path {
        "/metrics" => "/metrics",
        "/healthz" => "/healthz",
        _ => {
            let parts: Vec<&str> = path.split('/').collect();
            if matches!(parts.as_slice(), ["", "v1", "modules", _, "call", _]) {
                CALL_ROUTE
            } else {
                "other"
            }
        }
    }
}

/// The `method` label: a standard method, or `other` (a client can send
/// any token).
fn method_of(method: &axum::http::Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method.as_str())
        .unwrap_or("other")
}

async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = route_of(request.uri().path());
    let method = method_of(request.method());
    let start = Instant::now();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let elapsed = start.elapsed();
    let code = response.status().as_u16();
    if response.status().is_server_error() {
        tracing::warn!(method, path, status = code, ?elapsed, "request failed");
    } else {
        tracing::debug!(method, path, status = code, ?elapsed, "request");
    }
    let status = code.to_string();
    let labels = [route, method, status.as_str()];
    state.metrics.requests.with_label_values(&labels).inc();
    state
        .metrics
        .duration
        .with_label_values(&labels)
        .observe(elapsed.as_secs_f64());
    response
}

async fn not_found() -> CallError {
    CallError::new(
        ErrorKind::NotFound,
        "no such route (POST /v1/modules/{name}/call/{function}, GET /metrics, GET /healthz)",
    )
}

async fn method_not_allowed() -> CallError {
    CallError::new(
        ErrorKind::MethodNotAllowed,
        "method not allowed on this route (calls are POST, /metrics and /healthz GET)",
    )
}

async fn healthz() -> axum::Json<Json> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_to_string(&state.registry.gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => CallError::new(
            ErrorKind::Internal,
            format!("cannot encode the metrics: {e}"),
        )
        .into_response(),
    }
}

/// A call's body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallBody {
    #[serde(default)]
    args: Vec<Json>,
    signature: Option<Signature>,
}

/// Types named by the caller, for exports whose WebAssembly types do not
/// say (strings and byte buffers).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signature {
    #[serde(default)]
    params: Vec<String>,
    result: Option<String>,
}

fn bad_request(message: impl Into<String>) -> CallError {
    CallError::new(ErrorKind::BadRequest, message)
}

/// The call's parameter and result types: from the signature given, else
/// from the export's.
fn types(
    pool: &ModulePool,
    module: &str,
    function: &str,
    signature: Option<&Signature>,
) -> Result<(Vec<ReturnType>, ReturnType), CallError> {
    let export = pool
        .exports()
        .iter()
        .find(|e| e.name() == function)
        .ok_or_else(|| {
            CallError::new(
                ErrorKind::NotFound,
                format!("module `{module}` exports no function `{function}`"),
            )
        })?;
    match signature {
        None => values::types_of(export)
            .map_err(|e| bad_request(format!("{e}; name the types with \"signature\""))),
        Some(signature) => {
            let params = signature
                .params
                .iter()
                .map(|name| values::type_from_name(name))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad_request(format!("signature: {e}")))?;
            if params.contains(&ReturnType::Void) {
                return Err(bad_request("signature: a parameter cannot be void"));
            }
            let result = match &signature.result {
                None => ReturnType::Void,
                Some(name) => values::type_from_name(name)
                    .map_err(|e| bad_request(format!("signature: {e}")))?,
            };
            Ok((params, result))
        }
    }
}

async fn call(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Json>, CallError> {
    let Path((module, function)) = path.map_err(|rejection| bad_request(rejection.body_text()))?;
    let body = body.map_err(|rejection| {
        let kind = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorKind::PayloadTooLarge
        } else {
            ErrorKind::BadRequest
        };
        CallError::new(kind, rejection.body_text())
    })?;
    let pool = state.modules.get(&module).ok_or_else(|| {
        let mut names: Vec<&str> = state.modules.keys().map(String::as_str).collect();
        names.sort_unstable();
        CallError::new(
            ErrorKind::NotFound,
            format!("no module named `{module}` (modules: {})", names.join(", ")),
        )
    })?;
    let body: CallBody = if body.is_empty() {
        CallBody {
            args: Vec::new(),
            signature: None,
        }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| bad_request(format!("the body is not a call: {e}")))?
    };
    if let Some(exports) = pool.component_exports() {
        if body.signature.is_some() {
            return Err(bad_request(
                "a component's exports have WIT types: no \"signature\"",
            ));
        }
        let export = exports
            .iter()
            .find(|e| e.name == function)
            .cloned()
            .ok_or_else(|| {
                CallError::new(
                    ErrorKind::NotFound,
                    format!("component `{module}` exports no function `{function}`"),
                )
            })?;
        if body.args.len() != export.ty.params.len() {
            return Err(bad_request(format!(
                "`{function}` takes {} argument(s), {} given (`{export}`)",
                export.ty.params.len(),
                body.args.len()
            )));
        }
        let args = export
            .ty
            .params
            .iter()
            .zip(&body.args)
            .enumerate()
            .map(|(i, ((name, ty), json))| {
                component_json::from_json(ty, json)
                    .map_err(|e| bad_request(format!("args[{i}] (`{name}`): {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let answer = pool.submit(function, CallArgs::Component(args))?;
        let results = match answer
            .await
            .map_err(|_| CallError::new(ErrorKind::Internal, "the worker went away"))??
        {
            Answer::Component(results) => results,
            Answer::Module(_) => {
                return Err(CallError::new(
                    ErrorKind::Internal,
                    "a module's answer to a component call",
                ));
            }
        };
        let result = match (results.first(), export.ty.results.first()) {
            (Some(val), Some(ty)) => component_json::to_json(val, ty),
            _ => Json::Null,
        };
        return Ok(axum::Json(serde_json::json!({ "result": result })));
    }
    let (params, result) = types(pool, &module, &function, body.signature.as_ref())?;
    values::check_count(&function, &params, body.args.len()).map_err(bad_request)?;
    let args = params
        .iter()
        .zip(&body.args)
        .enumerate()
        .map(|(i, (ty, json))| {
            values::parse_json(*ty, json).map_err(|e| bad_request(format!("args[{i}]: {e}")))
        })
        .collect::<Result<Vec<ParameterValue>, _>>()?;
    let answer = pool.submit(function, CallArgs::Module { args, result })?;
    let value = match answer
        .await
        .map_err(|_| CallError::new(ErrorKind::Internal, "the worker went away"))??
    {
        Answer::Module(value) => value,
        Answer::Component(_) => {
            return Err(CallError::new(
                ErrorKind::Internal,
                "a component's answer to a module call",
            ));
        }
    };
    Ok(axum::Json(
        serde_json::json!({"result": values::to_json(&value)}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_labelled_by_template_only() {
        assert_eq!(route_of("/v1/modules/a/call/add"), CALL_ROUTE);
        assert_eq!(method_of(&axum::http::Method::POST), "POST");
        let odd = axum::http::Method::from_bytes(b"FOO1").unwrap();
        assert_eq!(method_of(&odd), "other");
        assert_eq!(route_of("/metrics"), "/metrics");
        assert_eq!(route_of("/healthz"), "/healthz");
        for other in [
            "/",
            "/v1/modules/a/call",
            "/v1/modules/a/call/add/x",
            "/anything",
        ] {
            assert_eq!(route_of(other), "other", "{other}");
        }
    }
}
