//! The HTTP server: basic authentication and the JSON-RPC envelope (1.0 and 2.0, batches) as
//! bitcoind's HTTP server does them, plus routing of the unauthenticated REST interface.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;

use super::rest;
use super::rpc::{self, RpcError, RPC_INVALID_REQUEST, RPC_METHOD_NOT_FOUND, RPC_PARSE_ERROR};
use super::Shared;

/// Largest request body accepted.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// The router serving RPC on `/` (and `/wallet/<name>`) and REST under `/rest/`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", post(rpc_handler))
        .route("/wallet/{wallet}", post(rpc_handler))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut text = body.to_string();
    text.push('\n');
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response()
}

/// Whether the request carries the RPC credentials in basic auth (compared in constant time).
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    shared.credentials_match(&decoded)
}

async fn rpc_handler(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&shared, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"jsonrpc\""),
            )],
        )
            .into_response();
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(_) => {
            let error = RpcError::new(RPC_PARSE_ERROR, "Parse error");
            let reply = json!({ "result": null, "error": error.to_json(), "id": null });
            return json_response(StatusCode::INTERNAL_SERVER_ERROR, &reply);
        }
    };
    // Mining and script checks hold the lock for a while: keep them off the I/O threads.
    let worker = shared.clone();
    let handled = tokio::task::spawn_blocking(move || handle_request(&worker, request)).await;
    match handled {
        Ok(Some((status, reply))) => json_response(status, &reply),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => {
            let error = RpcError::new(rpc::RPC_MISC_ERROR, "internal error");
            let reply = json!({ "result": null, "error": error.to_json(), "id": null });
            json_response(StatusCode::INTERNAL_SERVER_ERROR, &reply)
        }
    }
}

/// One parsed request: a single call or a batch. `None` for a JSON-RPC 2.0 notification.
fn handle_request(shared: &Shared, request: Value) -> Option<(StatusCode, Value)> {
    match request {
        Value::Array(calls) => {
            let replies: Vec<Value> = calls
                .into_iter()
                .filter_map(|call| handle_call(shared, call).map(|r| r.1))
                .collect();
            Some((StatusCode::OK, Value::Array(replies)))
        }
        Value::Object(_) => handle_call(shared, request),
        _ => {
            let error = RpcError::new(RPC_PARSE_ERROR, "Top-level object parse error");
            let reply = json!({ "result": null, "error": error.to_json(), "id": null });
            Some((StatusCode::INTERNAL_SERVER_ERROR, reply))
        }
    }
}

/// One call, answered in its JSON-RPC version with bitcoind's HTTP status for it.
fn handle_call(shared: &Shared, call: Value) -> Option<(StatusCode, Value)> {
    let Value::Object(call) = call else {
        let error = RpcError::new(RPC_INVALID_REQUEST, "Invalid Request object");
        return Some((
            StatusCode::BAD_REQUEST,
            json!({ "result": null, "error": error.to_json(), "id": null }),
        ));
    };
    let id = call.get("id").cloned();
    let version_two = match call.get("jsonrpc") {
        None => false,
        Some(Value::String(v)) if v == "1.0" => false,
        Some(Value::String(v)) if v == "2.0" => true,
        Some(_) => {
            let error = RpcError::new(RPC_INVALID_REQUEST, "JSON-RPC version not supported");
            return Some((
                StatusCode::BAD_REQUEST,
                json!({ "result": null, "error": error.to_json(), "id": id }),
            ));
        }
    };
    let result = match call.get("method") {
        Some(Value::String(method)) => {
            let params = call.get("params").cloned().unwrap_or(Value::Null);
            let started = std::time::Instant::now();
            let result = rpc::call(shared, method, &params);
            log::debug!("devchain: rpc {method} took {:?}", started.elapsed());
            result
        }
        _ => Err(RpcError::new(
            RPC_INVALID_REQUEST,
            "Method must be a string",
        )),
    };
    if version_two {
        let id = id?;
        return Some(match result {
            Ok(value) => (
                StatusCode::OK,
                json!({ "jsonrpc": "2.0", "result": value, "id": id }),
            ),
            Err(error) => (
                StatusCode::OK,
                json!({ "jsonrpc": "2.0", "error": error.to_json(), "id": id }),
            ),
        });
    }
    let id = id.unwrap_or(Value::Null);
    Some(match result {
        Ok(value) => (
            StatusCode::OK,
            json!({ "result": value, "error": null, "id": id }),
        ),
        Err(error) => {
            let status = match error.code {
                RPC_INVALID_REQUEST => StatusCode::BAD_REQUEST,
                RPC_METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (
                status,
                json!({ "result": null, "error": error.to_json(), "id": id }),
            )
        }
    })
}

async fn fallback(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    let Some(path) = uri.path().strip_prefix("/rest/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "Only GET is supported\r\n").into_response();
    }
    let path = path.to_string();
    let query = uri.query().map(str::to_string);
    let worker = shared.clone();
    let reply =
        tokio::task::spawn_blocking(move || rest::handle(&worker, &path, query.as_deref())).await;
    match reply {
        Ok(reply) => {
            let content_type = HeaderValue::from_static(reply.content_type);
            (
                reply.status,
                [(header::CONTENT_TYPE, content_type)],
                reply.body,
            )
                .into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
