//! The browser client at `GET /`: one HTML page, one stylesheet, the page's script
//! (`app.js`, the UI) and the TypeScript SDK's browser bundle (`natter.js`), compiled
//! into the binary so that every node serves the same client with no files to deploy
//! beside it, and `cargo build` needs no JavaScript tool.
//!
//! The client talks to the node that served it, through the same public REST and
//! WebSocket API as any other client, and only through the SDK (SPEC §13): `app.js` is
//! an ES module that imports `natter.js`, which keeps the SPEC §1 promises on the
//! client's side (one socket opened with a ticket, resume with `since_seq`, each `seq`
//! once, sends re-sent with their `client_msg_id`). `natter.js` is generated: `bash
//! clients/typescript/build --web` writes it from `clients/typescript/src`, and
//! `tests/api/web_bundle.rs` fails when the committed copy is not that build's output.
//!
//! The pages are strict about what they may load: a Content-Security-Policy allows only
//! this origin's scripts, style and connections, so text that another user typed can
//! never run as code even if a rendering bug let it into the page.

use std::{
    hash::{Hash, Hasher},
    sync::LazyLock,
};

use poem::{
    Request, Response,
    http::{StatusCode, header},
};

/// One file the client is made of, with its ETag computed once.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: LazyLock<String>,
}

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
const NATTER_JS: &str = include_str!("natter.js");

static INDEX: Asset = Asset {
    body: INDEX_HTML,
    content_type: "text/html; charset=utf-8",
    etag: LazyLock::new(|| etag(INDEX_HTML)),
};
static SCRIPT: Asset = Asset {
    body: APP_JS,
    content_type: "text/javascript; charset=utf-8",
    etag: LazyLock::new(|| etag(APP_JS)),
};
static SDK: Asset = Asset {
    body: NATTER_JS,
    content_type: "text/javascript; charset=utf-8",
    etag: LazyLock::new(|| etag(NATTER_JS)),
};
static STYLE: Asset = Asset {
    body: APP_CSS,
    content_type: "text/css; charset=utf-8",
    etag: LazyLock::new(|| etag(APP_CSS)),
};

/// Same-origin only; `connect-src 'self'` covers the page's own `ws:`/`wss:` origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The page.
#[poem::handler]
pub fn index(req: &Request) -> Response {
    serve(&INDEX, req)
}

/// `/app.js`.
#[poem::handler]
pub fn script(req: &Request) -> Response {
    serve(&SCRIPT, req)
}

/// `/natter.js`: the SDK, which `app.js` imports.
#[poem::handler]
pub fn sdk(req: &Request) -> Response {
    serve(&SDK, req)
}

/// `/app.css`.
#[poem::handler]
pub fn style(req: &Request) -> Response {
    serve(&STYLE, req)
}

/// Answers with `asset`, or `304` when the browser already holds this build's copy.
/// Browsers revalidate every time (`no-cache`), so a node upgraded behind the load
/// balancer never leaves a tab on a stale script after a reload.
fn serve(asset: &Asset, req: &Request) -> Response {
    let etag = asset.etag.as_str();
    let cached = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let builder = Response::builder()
        .header(header::ETAG, etag)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer");
    if cached {
        return builder.status(StatusCode::NOT_MODIFIED).finish();
    }
    builder.content_type(asset.content_type).body(asset.body)
}

/// A strong validator of the file's content. The hasher is SipHash with fixed keys, so
/// every node of one build gives the same tag and a load balancer may switch nodes
/// between requests.
fn etag(body: &str) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    body.hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}
