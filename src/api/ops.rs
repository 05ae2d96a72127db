//! Operational routes and the middleware every request passes through.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use opentelemetry::trace::SpanKind;
use poem::{
    Endpoint, IntoResponse, Request, Response, Result,
    http::{HeaderValue, Method, StatusCode, header},
    web::Data,
};

use crate::{
    api::{context::ApiContext, error::ApiError, security},
    client_address::ClientAddress,
    metrics::CONTENT_TYPE,
    telemetry::TraceSpan,
};

/// The process is alive.
#[poem::handler]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready for traffic: Postgres and NATS reachable and not draining.
#[poem::handler]
pub async fn readyz(Data(state): Data<&ApiContext>) -> Response {
    let draining = state.is_draining();
    let (database, nats) = state.chat.dependencies_reachable().await;
    let ready = database && nats && !draining;
    let body = serde_json::json!({
        "ready": ready,
        "database": database,
        "nats": nats,
        "draining": draining,
        "node_id": state.settings.node_id,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, poem::web::Json(body)).into_response()
}

/// Prometheus text exposition.
#[poem::handler]
pub async fn metrics(Data(state): Data<&ApiContext>) -> Response {
    let text = state.render_metrics();
    Response::builder().content_type(CONTENT_TYPE).body(text)
}

/// Rejects request bodies over `max` bytes with `413`, whether or not the client sent a
/// `Content-Length`: a declared length is checked up front, a streamed body is read
/// only up to the limit. Only a real WebSocket handshake is not read (SPEC §10): its
/// connection belongs to the socket once upgraded.
pub async fn limit_body<E: Endpoint>(ep: E, mut req: Request, max: usize) -> Result<Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE));
    }
    if declared.is_none() && !is_websocket_handshake(&req) {
        let body = req.take_body().into_bytes_limit(max).await?;
        req.set_body(body);
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

/// Works out where a request comes from and admits it (SPEC §18).
///
/// The [`ClientAddress`] (from `X-Forwarded-For` when the peer is one of
/// `TRUSTED_PROXIES`) is attached to the request for the handlers that count per
/// address. A request carrying no credential spends its address's budget for such
/// requests before it is handled (`429` when spent); one whose credential is refused
/// spends it afterwards, so a made-up token is no way around the budget. Health checks
/// are never refused: a balancer that could not probe would take the node out.
pub async fn admit<E: Endpoint>(ep: E, mut req: Request) -> Result<Response> {
    let context = security::context(&req).clone();
    let peer = req
        .remote_addr()
        .as_socket_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| addr.ip());
    let forwarded_for = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok());
    let from = ClientAddress::resolve(peer, forwarded_for, &context.settings.trusted_proxies);
    req.extensions_mut().insert(from);
    let credentialed = carries_credential(&req);
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
    if !credentialed
        && !probe
        && let Err(err) = context.chat.admit_unauthenticated(from)
    {
        return Ok(ApiError::from(err).into_response());
    }
    let result = ep.call(req).await.map(IntoResponse::into_response);
    let status = match &result {
        Ok(response) => response.status(),
        Err(err) => err.status(),
    };
    if credentialed && status == StatusCode::UNAUTHORIZED {
        // Already refused; this only spends the budget for the next one.
        let _ = context.chat.admit_unauthenticated(from);
    }
    result
}

/// Whether the request offers a credential of any kind: an `Authorization` header, or
/// a `token` or `ticket` in the query (the sockets and the seeds' routes).
fn carries_credential(req: &Request) -> bool {
    req.headers().contains_key(header::AUTHORIZATION)
        || req.uri().query().is_some_and(|query| {
            query
                .split('&')
                .any(|pair| pair.starts_with("token=") || pair.starts_with("ticket="))
        })
}

/// A GET to a WebSocket route that asks to upgrade to `websocket` and carries no body:
/// any other request with an `Upgrade` header is an ordinary request.
fn is_websocket_handshake(req: &Request) -> bool {
    let path = req.uri().path();
    let upgrade = req.headers().get(header::UPGRADE);
    req.method() == Method::GET
        && (path == "/v1/ws" || path.starts_with("/v1/ws/"))
        && upgrade.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && !req.headers().contains_key(header::TRANSFER_ENCODING)
}

/// Cross-origin access for the browser origins in `allowed` (`CORS_ALLOWED_ORIGINS`),
/// and for no other.
///
/// A request from an origin not on the list passes through untouched: it gets no
/// `Access-Control-Allow-*` headers, so a browser keeps the response from the other
/// site's script, while same-origin pages (which browsers also send an `Origin` with)
/// work as before. Credentials are bearer tokens, never cookies, so
/// `Allow-Credentials` is not sent.
pub async fn cors<E: Endpoint>(ep: E, req: Request, allowed: Arc<[String]>) -> Result<Response> {
    if allowed.is_empty() {
        return ep.call(req).await.map(IntoResponse::into_response);
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|origin| allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()))
        .cloned();
    let Some(origin) = origin else {
        // Answers differ by origin, so caches must not share them across origins.
        let mut response = ep.call(req).await.map(IntoResponse::into_response)?;
        let vary = HeaderValue::from_static("origin");
        response.headers_mut().insert(header::VARY, vary);
        return Ok(response);
    };
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "GET, POST, PUT, PATCH, DELETE",
            )
            .header(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, content-type, traceparent",
            )
            .header(header::ACCESS_CONTROL_MAX_AGE, "600")
            .finish()
    } else {
        let mut response = ep.call(req).await.map(IntoResponse::into_response)?;
        response.headers_mut().insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    Ok(response)
}

/// Runs each request in a trace context continued from its `traceparent` header (a
/// server span), logs its outcome and counts its status for `/metrics`.
pub async fn observe_request<E: Endpoint>(ep: E, req: Request) -> Result<Response> {
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(Arc::<str>::from);
    let state = req.data::<ApiContext>().cloned();
    let node_id = state
        .as_ref()
        .map_or("", |state| state.settings.node_id.as_str());
    let mut trace_span = TraceSpan::start(
        req.method().to_string(),
        SpanKind::Server,
        parent.as_ref(),
        node_id,
    );
    // The path only: a WebSocket token may be in the query.
    trace_span.set_attribute("url.path", req.uri().path().to_string());
    let traceparent = trace_span.traceparent().clone();
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path());
    let started = std::time::Instant::now();
    let work = tracing::Instrument::instrument(
        async move {
            let result = ep.call(req).await.map(IntoResponse::into_response);
            let status = match &result {
                Ok(response) => response.status(),
                Err(err) => err.status(),
            };
            trace_span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
            if let Some(state) = &state {
                state.metrics.count_response(status);
            }
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            if status.is_server_error() {
                tracing::warn!(status = status.as_u16(), elapsed_ms, "request failed");
            } else {
                tracing::debug!(status = status.as_u16(), elapsed_ms, "request served");
            }
            result
        },
        span,
    );
    crate::telemetry::in_trace(traceparent, work).await
}
