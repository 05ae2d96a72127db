//! Settings, read from the environment (SPEC §7).
//!
//! Every setting is parsed up front, so a bad or missing one stops start-up with a single
//! line that names it instead of failing later under load.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

/// How long a message that arrived ahead of its predecessors waits for them before they
/// are read from Postgres, unless configured (`REORDER_WAIT_MS`). NATS delivers in well
/// under a millisecond when a node keeps up and in tens when it is saturated; a real
/// loss costs its room this much latency once.
pub const DEFAULT_REORDER_WAIT: Duration = Duration::from_millis(100);

/// The `iss` of tokens Natter signs itself; no external issuer may use it.
pub const LOCAL_ISSUER: &str = "natter";

/// Shortest shared secret accepted for HS256 (SPEC §10): 256 bits.
const MIN_HS256_SECRET_BYTES: usize = 32;

/// Everything a node needs to start. `Debug` leaves out the URLs, which may carry
/// passwords (the auth settings leave out their secrets).
#[derive(Clone)]
pub struct Settings {
    /// Where Postgres lives; the source of truth for all durable state.
    pub database_url: String,
    /// Connections the node keeps to Postgres.
    pub database_pool_size: usize,
    /// An extra CA certificate (PEM) for Postgres over TLS (`sslmode=require`).
    pub database_ca_file: Option<std::path::PathBuf>,
    /// A standby that history pages, search and the chat list may read from once it
    /// has caught up (`store::Store::reader`).
    pub database_read_url: Option<String>,
    /// One or more NATS servers (a cluster is given comma-separated).
    pub nats_url: String,
    /// First token of every NATS subject and of the presence bucket's name, so several
    /// clusters (or test runs) can share one NATS.
    pub nats_prefix: String,
    /// How the node proves itself to NATS and checks NATS's certificate, beyond what
    /// `nats_url` carries (SPEC §10).
    pub nats_auth: NatsAuth,
    /// How long a connection's presence outlives its node's last refresh.
    pub presence_ttl: Duration,
    /// Replicas of the presence bucket; defaults to the number of NATS servers given.
    pub presence_replicas: usize,
    /// How long a message that reached a node ahead of its predecessors waits for them
    /// before they are read from Postgres ([`DEFAULT_REORDER_WAIT`]).
    pub reorder_wait: Duration,
    /// Address the HTTP server binds; port 0 picks a free one (tests).
    pub listen_addr: SocketAddr,
    /// Where `/metrics` is served instead of `listen_addr`, when set: a port that the
    /// balancer and the Ingress do not route.
    pub metrics_addr: Option<SocketAddr>,
    /// Names this node in logs and metrics; defaults to the host name.
    pub node_id: String,
    /// Natter's own token settings.
    pub auth: AuthSettings,
    /// Input and rate limits (SPEC §5).
    pub limits: Limits,
    /// Browser origins allowed to call the API cross-origin; none by default, so only
    /// pages served by the node itself (same origin) can.
    pub cors_origins: Vec<String>,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Where spans go (`OTEL_EXPORTER_OTLP_ENDPOINT`, the collector's OTLP/HTTP base
    /// URL); no tracing without it.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// Whether the seeds' drop-in routes are served (SPEC §12, `COMPAT_ROUTES`).
    pub compat_routes: bool,
    /// Webhooks that receive every room's events (SPEC §11, `WEBHOOKS`).
    pub webhooks: Vec<crate::webhooks::ClusterWebhook>,
    /// Whether webhooks may target loopback, private and link-local addresses.
    pub webhook_allow_private: bool,
    /// The before-send moderation hook (SPEC §11), if `SEND_HOOK_URL` is set.
    pub send_hook: Option<crate::webhooks::send_hook::SendHookSettings>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &"<redacted>")
            .field("database_pool_size", &self.database_pool_size)
            .field("database_ca_file", &self.database_ca_file)
            .field(
                "database_read_url",
                &self.database_read_url.as_ref().map(|_| "<redacted>"),
            )
            .field("nats_url", &"<redacted>")
            .field("nats_prefix", &self.nats_prefix)
            .field("nats_auth", &self.nats_auth)
            .field("presence_ttl", &self.presence_ttl)
            .field("presence_replicas", &self.presence_replicas)
            .field("reorder_wait", &self.reorder_wait)
            .field("listen_addr", &self.listen_addr)
            .field("metrics_addr", &self.metrics_addr)
            .field("node_id", &self.node_id)
            .field("auth", &self.auth)
            .field("limits", &self.limits)
            .field("cors_origins", &self.cors_origins)
            .field("send_hook", &self.send_hook)
            .field("compat_routes", &self.compat_routes)
            .field("webhooks", &self.webhooks.len())
            .field("webhook_allow_private", &self.webhook_allow_private)
            .field("log_format", &self.log_format)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("service_name", &self.service_name)
            .finish()
    }
}

/// `LOG_FORMAT`: one JSON object per line for log shippers (default), or text for a
/// terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Files that authenticate the node to NATS and verify NATS's certificate. A user and
/// password or a token can also ride in `NATS_URL` itself (`nats://user:pass@host`), and
/// `tls://` asks for TLS.
#[derive(Clone, Debug, Default)]
pub struct NatsAuth {
    /// A NATS `.creds` file (a user JWT and its nkey seed: decentralised auth).
    pub creds_file: Option<PathBuf>,
    /// A file holding the password of the user named in `NATS_URL` (`nats://natter@…`):
    /// for passwords generated into a volume or mounted from a secret.
    pub password_file: Option<PathBuf>,
    /// A CA certificate (PEM) to verify the NATS servers with; implies TLS.
    pub ca_file: Option<PathBuf>,
}

/// How Natter issues its own tokens and which external issuers it trusts.
#[derive(Clone)]
pub struct AuthSettings {
    /// Signs and verifies Natter's own HS256 tokens; `None`: the cluster's generated
    /// key, stored in Postgres (`auth::local_signing_key`).
    pub jwt_secret: Option<String>,
    /// Lifetime of a token issued at register, login or `natter token`.
    pub token_ttl: Duration,
    /// External identity providers whose tokens are accepted too.
    pub issuers: Vec<IssuerConfig>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("jwt_secret", &"<redacted>")
            .field("token_ttl", &self.token_ttl)
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &i.issuer).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// One external issuer from `JWT_ISSUERS`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Expected `iss` claim; also how a token is matched to this entry.
    pub issuer: String,
    /// Expected `aud` claim.
    pub audience: String,
    /// Where the issuer publishes its signing keys (RS256/ES256).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A shared secret (Supabase style HS256).
    #[serde(default)]
    pub hs256_secret: Option<String>,
}

/// Input and rate limits; the defaults are those of SPEC §5.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest message text, in characters.
    pub max_text_chars: usize,
    /// Largest request body, in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// Sustained sends per second per user.
    pub sends_per_second: f64,
    /// Sends a user may make at once before the rate applies.
    pub send_burst: u32,
    /// Sustained edits, deletes and reaction changes per second per user (SPEC §10).
    pub edits_per_second: f64,
    /// Edits, deletes and reaction changes a user may make at once.
    pub edit_burst: u32,
    /// Rooms and direct rooms a user may create per minute (SPEC §10).
    pub room_creations_per_minute: u32,
    /// Subscribes and unsubscribes per second per socket (SPEC §10).
    pub subscribes_per_second: u32,
    /// Open sockets per user on one node; the next upgrade is refused with 429.
    pub sockets_per_user: usize,
    /// Largest WebSocket message a client may send; larger closes the socket with 1009.
    pub max_frame_bytes: usize,
    /// Rooms one socket may subscribe to.
    pub max_rooms_per_socket: usize,
    /// Events queued for one socket; a socket this far behind is closed with 4008.
    pub outbound_queue: usize,
    /// How long a client may take to send one HTTP request (head and body) before the
    /// connection is cut off (slowloris).
    pub request_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_chars: 4000,
            max_body_bytes: 64 * 1024,
            sends_per_second: 10.0,
            send_burst: 30,
            edits_per_second: 20.0,
            edit_burst: 60,
            room_creations_per_minute: 30,
            subscribes_per_second: 100,
            sockets_per_user: 50,
            max_frame_bytes: 64 * 1024,
            max_rooms_per_socket: 1000,
            outbound_queue: 1024,
            request_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Declares every setting once: its flag (the field's name in kebab case), its
/// environment variable, the default `--help` shows and what it means. Flags override the
/// environment; both are strings here and are parsed, and checked together, by
/// [`Settings::from_lookup`], so a flag and its variable can never be read two ways.
macro_rules! settings_args {
    ($( $(#[doc = $doc:literal])* $field:ident: $env:literal $(= $default:literal)?; )*) => {
        /// The node's settings as flags (`natter serve --help`), each beside its
        /// environment variable. Values are never printed (some are secrets).
        #[derive(Clone, Default, clap::Args)]
        pub struct SettingsArgs {
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env, hide_env_values = true $(, default_value = $default)?)]
                $field: Option<String>,
            )*
        }

        impl SettingsArgs {
            /// The value given for the environment variable `name`, by flag or variable.
            fn get(&self, name: &str) -> Option<String> {
                match name {
                    $( $env => self.$field.clone(), )*
                    _ => None,
                }
            }

            /// The flag that sets the environment variable `name`, for error messages.
            fn flag(name: &str) -> Option<&'static str> {
                match name {
                    $( $env => Some(stringify!($field)), )*
                    _ => None,
                }
            }
        }
    };
}

settings_args! {
    /// Postgres, the source of truth (`postgres://user:pass@host/db`; `sslmode=require`
    /// for TLS).
    database_url: "DATABASE_URL";
    /// Connections this node keeps to Postgres.
    database_pool_size: "DATABASE_POOL_SIZE" = "16";
    /// An extra CA certificate (PEM) for Postgres over TLS.
    database_ca_file: "DATABASE_CA_FILE";
    /// A Postgres standby for history pages, search and the chat list; used only once
    /// it has replayed what the primary had when the read began.
    database_read_url: "DATABASE_READ_URL";
    /// NATS servers, comma-separated for a cluster; may carry a user and password or a
    /// token (`nats://user:pass@host:4222`), and `tls://` for TLS.
    nats_url: "NATS_URL";
    /// A NATS `.creds` file (decentralised auth: user JWT and nkey seed).
    nats_creds_file: "NATS_CREDS_FILE";
    /// A file holding the password of the user NATS_URL names (`nats://natter@host`).
    nats_password_file: "NATS_PASSWORD_FILE";
    /// A CA certificate (PEM) that signed the NATS servers' certificates; implies TLS.
    nats_ca_file: "NATS_CA_FILE";
    /// First token of every NATS subject and of the presence bucket's name.
    nats_prefix: "NATS_PREFIX" = "natter";
    /// Signs Natter's own tokens (HS256); at least 32 bytes [default: a random key the
    /// cluster generates once and keeps in Postgres].
    jwt_secret: "JWT_SECRET";
    /// Lifetime of the tokens Natter issues, in seconds.
    jwt_ttl_secs: "JWT_TTL_SECS" = "86400";
    /// External identity providers: a JSON list of {issuer, audience, jwks_url |
    /// hs256_secret}.
    jwt_issuers: "JWT_ISSUERS";
    /// Address the HTTP server binds.
    listen_addr: "LISTEN_ADDR" = "0.0.0.0:8080";
    /// Serve /metrics on this address instead of LISTEN_ADDR [default: on LISTEN_ADDR].
    metrics_addr: "METRICS_ADDR";
    /// Names this node in logs, metrics and presence [default: the host name].
    node_id: "NODE_ID";
    /// Longest message text, in characters.
    max_text_chars: "MAX_TEXT_CHARS" = "4000";
    /// Largest request body, in bytes (larger: 413).
    max_body_bytes: "MAX_BODY_BYTES" = "65536";
    /// Sustained sends per second per user.
    send_rate_per_sec: "SEND_RATE_PER_SEC" = "10";
    /// Sends a user may make at once before the rate applies.
    send_burst: "SEND_BURST" = "30";
    /// Sustained edits, deletes and reaction changes per second per user.
    edit_rate_per_sec: "EDIT_RATE_PER_SEC" = "20";
    /// Edits, deletes and reaction changes a user may make at once.
    edit_burst: "EDIT_BURST" = "60";
    /// Rooms and direct rooms a user may create per minute.
    room_creations_per_min: "ROOM_CREATIONS_PER_MIN" = "30";
    /// Subscribes and unsubscribes per second per socket.
    subscribe_rate_per_sec: "SUBSCRIBE_RATE_PER_SEC" = "100";
    /// Open sockets per user on one node (the next upgrade: 429).
    max_sockets_per_user: "MAX_SOCKETS_PER_USER" = "50";
    /// Largest WebSocket frame a client may send, in bytes (larger: close 1009).
    max_frame_bytes: "MAX_FRAME_BYTES" = "65536";
    /// Rooms one socket may subscribe to.
    max_rooms_per_socket: "MAX_ROOMS_PER_SOCKET" = "1000";
    /// Events queued for one socket before it is closed with 4008.
    outbound_queue: "OUTBOUND_QUEUE" = "1024";
    /// Seconds a client may take to send one HTTP request.
    request_read_timeout_secs: "REQUEST_READ_TIMEOUT_SECS" = "10";
    /// Seconds a connection's presence outlives its node's last refresh.
    presence_ttl_secs: "PRESENCE_TTL_SECS" = "10";
    /// Replicas of the presence bucket [default: the number of NATS servers given, at
    /// most 5].
    presence_replicas: "PRESENCE_REPLICAS";
    /// Milliseconds a message that arrived ahead of its predecessors waits for them
    /// before they are read from Postgres.
    reorder_wait_ms: "REORDER_WAIT_MS" = "100";
    /// Browser origins allowed to call the API cross-origin, comma-separated.
    cors_allowed_origins: "CORS_ALLOWED_ORIGINS";
    /// Log lines as `json` or `text`.
    log_format: "LOG_FORMAT" = "json";
    /// Where spans go: an OTLP/HTTP collector's base URL (no tracing without it).
    otel_exporter_otlp_endpoint: "OTEL_EXPORTER_OTLP_ENDPOINT";
    /// `service.name` of the spans.
    otel_service_name: "OTEL_SERVICE_NAME" = "natter";
    /// `false`: no drop-in routes for the original backends' clients (`/rooms/`,
    /// `/api/...`, `/ws/...`).
    compat_routes: "COMPAT_ROUTES" = "true";
    /// Webhooks that receive every room's events: a JSON list of
    /// `{"url", "secret": "whsec_…", "events"?: [...]}`.
    webhooks: "WEBHOOKS";
    /// `true`: webhooks may target loopback, private and link-local addresses.
    webhook_allow_private: "WEBHOOK_ALLOW_PRIVATE" = "false";
    /// The before-send moderation hook: an http(s) URL asked about every message
    /// before it is stored (none by default).
    send_hook_url: "SEND_HOOK_URL";
    /// Signs the hook's requests (Standard Webhooks, `whsec_` + base64).
    send_hook_secret: "SEND_HOOK_SECRET";
    /// Milliseconds a send waits for the hook's verdict.
    send_hook_timeout_ms: "SEND_HOOK_TIMEOUT_MS" = "1000";
    /// `true`: store the message when the hook fails or times out (default: refuse it
    /// with 503).
    send_hook_fail_open: "SEND_HOOK_FAIL_OPEN" = "false";
}

/// A setting that is missing or cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {}: {reason}", flag_and_variable(name))]
pub struct ConfigError {
    /// The environment variable (its flag is named in the message too).
    pub name: &'static str,
    pub reason: String,
}

/// `--flag-name / VARIABLE_NAME`, or the variable alone if it has no flag.
fn flag_and_variable(name: &str) -> String {
    match SettingsArgs::flag(name) {
        Some(field) => format!("--{} / {name}", field.replace('_', "-")),
        None => name.to_string(),
    }
}

impl Settings {
    /// Reads settings from the command line's flags and, for each flag not given, its
    /// environment variable (clap reads those into `args`).
    pub fn from_args(args: &SettingsArgs) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| args.get(name))
    }

    /// Reads settings through `lookup`, so tests can supply their own environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or(ConfigError {
                    name,
                    reason: "is required".into(),
                })
        };
        let parsed = |name: &'static str, default: &str| -> Result<String, ConfigError> {
            Ok(lookup(name).unwrap_or_else(|| default.to_string()))
        };

        let database_url = required("DATABASE_URL")?;
        database_url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| bad("DATABASE_URL", e))?;
        let nats_url = required("NATS_URL")?;
        let jwt_secret = lookup("JWT_SECRET").filter(|secret| !secret.is_empty());
        if let Some(secret) = &jwt_secret {
            check_jwt_secret(secret)?;
        }
        let listen_addr = parsed("LISTEN_ADDR", "0.0.0.0:8080")?
            .parse()
            .map_err(|e| bad("LISTEN_ADDR", e))?;
        let node_id = lookup("NODE_ID").unwrap_or_else(hostname);
        let issuers = match lookup("JWT_ISSUERS").filter(|v| !v.trim().is_empty()) {
            None => Vec::new(),
            Some(json) => parse_issuers(&json)?,
        };
        let token_ttl = Duration::from_secs(number(&lookup, "JWT_TTL_SECS", 86_400)?);
        let database_pool_size = number(&lookup, "DATABASE_POOL_SIZE", 16)?;
        let readable_file = |name: &'static str| match lookup(name).filter(|v| !v.is_empty()) {
            Some(path) if std::path::Path::new(&path).is_file() => Ok(Some(PathBuf::from(path))),
            Some(_) => Err(bad(name, "is not a readable file")),
            None => Ok(None),
        };
        let database_ca_file = readable_file("DATABASE_CA_FILE")?;
        let database_read_url = lookup("DATABASE_READ_URL").filter(|url| !url.is_empty());
        if let Some(url) = &database_read_url {
            url.parse::<tokio_postgres::Config>()
                .map_err(|e| bad("DATABASE_READ_URL", e))?;
        }
        let nats_auth = NatsAuth {
            creds_file: readable_file("NATS_CREDS_FILE")?,
            password_file: readable_file("NATS_PASSWORD_FILE")?,
            ca_file: readable_file("NATS_CA_FILE")?,
        };
        let metrics_addr = match lookup("METRICS_ADDR").filter(|v| !v.is_empty()) {
            Some(addr) => Some(addr.parse().map_err(|e| bad("METRICS_ADDR", e))?),
            None => None,
        };
        let defaults = Limits::default();
        let limits = Limits {
            max_text_chars: number(&lookup, "MAX_TEXT_CHARS", defaults.max_text_chars)?,
            max_body_bytes: number(&lookup, "MAX_BODY_BYTES", defaults.max_body_bytes)?,
            sends_per_second: number(&lookup, "SEND_RATE_PER_SEC", defaults.sends_per_second)?,
            send_burst: number(&lookup, "SEND_BURST", defaults.send_burst)?,
            edits_per_second: number(&lookup, "EDIT_RATE_PER_SEC", defaults.edits_per_second)?,
            edit_burst: number(&lookup, "EDIT_BURST", defaults.edit_burst)?,
            room_creations_per_minute: number(
                &lookup,
                "ROOM_CREATIONS_PER_MIN",
                defaults.room_creations_per_minute,
            )?,
            subscribes_per_second: number(
                &lookup,
                "SUBSCRIBE_RATE_PER_SEC",
                defaults.subscribes_per_second,
            )?,
            sockets_per_user: number(&lookup, "MAX_SOCKETS_PER_USER", defaults.sockets_per_user)?,
            max_frame_bytes: number(&lookup, "MAX_FRAME_BYTES", defaults.max_frame_bytes)?,
            max_rooms_per_socket: number(
                &lookup,
                "MAX_ROOMS_PER_SOCKET",
                defaults.max_rooms_per_socket,
            )?,
            outbound_queue: number(&lookup, "OUTBOUND_QUEUE", defaults.outbound_queue)?,
            request_read_timeout: Duration::from_secs(number(
                &lookup,
                "REQUEST_READ_TIMEOUT_SECS",
                defaults.request_read_timeout.as_secs(),
            )?),
        };
        let nats_prefix = parsed("NATS_PREFIX", "natter")?;
        let prefix_ok = !nats_prefix.is_empty()
            && nats_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !prefix_ok {
            return Err(bad("NATS_PREFIX", "must be letters, digits, '_' or '-'"));
        }
        // 10 s: a dead node's leases expire at most this long after its last refresh, so
        // its users are offline everywhere within 15 s (SPEC §1.6), with room for
        // JetStream's expiry timer.
        let presence_ttl = Duration::from_secs(number(&lookup, "PRESENCE_TTL_SECS", 10)?);
        let default_wait = DEFAULT_REORDER_WAIT.as_millis() as u64;
        let reorder_wait = Duration::from_millis(number(&lookup, "REORDER_WAIT_MS", default_wait)?);
        let cors_origins = lookup("CORS_ALLOWED_ORIGINS")
            .unwrap_or_default()
            .split(',')
            .map(|origin| origin.trim().trim_end_matches('/').to_string())
            .filter(|origin| !origin.is_empty())
            .map(|origin| {
                let host = origin
                    .strip_prefix("https://")
                    .or_else(|| origin.strip_prefix("http://"));
                match host.is_some_and(|host| !host.is_empty() && !host.contains('/')) {
                    true => Ok(origin),
                    false => Err(bad(
                        "CORS_ALLOWED_ORIGINS",
                        format!("{origin:?} is not an origin like https://chat.example.com"),
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let log_format = match parsed("LOG_FORMAT", "json")?.trim() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            _ => return Err(bad("LOG_FORMAT", "must be json or text")),
        };
        let otlp_endpoint = match lookup("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.is_empty()) {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => Some(url),
            Some(_) => return Err(bad("OTEL_EXPORTER_OTLP_ENDPOINT", "must be an http(s) URL")),
            None => None,
        };
        let service_name = parsed("OTEL_SERVICE_NAME", "natter")?;
        let compat_routes = match parsed("COMPAT_ROUTES", "true")?.trim() {
            "true" => true,
            "false" => false,
            _ => return Err(bad("COMPAT_ROUTES", "must be true or false")),
        };
        let webhook_allow_private = match parsed("WEBHOOK_ALLOW_PRIVATE", "false")?.trim() {
            "true" => true,
            "false" => false,
            _ => return Err(bad("WEBHOOK_ALLOW_PRIVATE", "must be true or false")),
        };
        let webhooks = match lookup("WEBHOOKS").filter(|v| !v.trim().is_empty()) {
            Some(json) => crate::webhooks::parse_cluster_webhooks(&json, webhook_allow_private)
                .map_err(|e| bad("WEBHOOKS", e))?,
            None => Vec::new(),
        };
        let send_hook = match lookup("SEND_HOOK_URL").filter(|v| !v.is_empty()) {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                let secret = match lookup("SEND_HOOK_SECRET").filter(|v| !v.is_empty()) {
                    Some(secret) => Some(
                        crate::webhooks::signing::Secret::parse(&secret)
                            .map_err(|e| bad("SEND_HOOK_SECRET", e))?,
                    ),
                    None => None,
                };
                let timeout = Duration::from_millis(number(&lookup, "SEND_HOOK_TIMEOUT_MS", 1000)?);
                if timeout.is_zero() {
                    return Err(bad("SEND_HOOK_TIMEOUT_MS", "must be at least 1"));
                }
                let fail_open = match parsed("SEND_HOOK_FAIL_OPEN", "false")?.trim() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("SEND_HOOK_FAIL_OPEN", "must be true or false")),
                };
                Some(crate::webhooks::send_hook::SendHookSettings {
                    url,
                    secret,
                    timeout,
                    fail_open,
                })
            }
            Some(_) => return Err(bad("SEND_HOOK_URL", "must be an http(s) URL")),
            None => None,
        };
        let servers = nats_url.split(',').count().min(5);
        let presence_replicas = number(&lookup, "PRESENCE_REPLICAS", servers)?;
        Ok(Self {
            database_url,
            database_pool_size,
            database_ca_file,
            database_read_url,
            nats_url,
            nats_prefix,
            nats_auth,
            presence_ttl,
            presence_replicas,
            reorder_wait,
            listen_addr,
            metrics_addr,
            node_id,
            auth: AuthSettings {
                jwt_secret,
                token_ttl,
                issuers,
            },
            limits,
            cors_origins,
            log_format,
            otlp_endpoint,
            service_name,
            compat_routes,
            webhooks,
            webhook_allow_private,
            send_hook,
        })
    }
}

fn bad(name: &'static str, err: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        name,
        reason: err.to_string(),
    }
}

fn number<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + Default,
    T::Err: std::fmt::Display,
{
    let Some(raw) = lookup(name) else {
        return Ok(default);
    };
    let value: T = raw.trim().parse().map_err(|e| bad(name, e))?;
    if value <= T::default() {
        return Err(bad(name, "must be greater than zero"));
    }
    Ok(value)
}

/// Every signing secret this repository has ever shipped, as a default, an example or a
/// test value: published, so anyone could sign tokens with them. Append only.
pub const SHIPPED_SECRETS: &[&str] = &[
    "local-only-secret-change-me-in-production",
    "local-development-secret",
    "dev-only-secret-dev-only-secret-dev-only",
    "change-me-to-at-least-32-random-bytes",
    "CHANGE-ME-TO-48-RANDOM-BYTES",
    "test-secret-test-secret-test-secret",
    "bench-secret-bench-secret",
    "faults-secret-faults-secret",
    "fuzzing-secret-fuzzing-secret",
    "0123456789abcdef0123",
    "supabase-style-shared-secret",
    "supabase-secret-supabase-secret",
];

/// Whether `secret` is one anyone could know: one this repository shipped.
pub fn is_shipped_secret(secret: &str) -> bool {
    SHIPPED_SECRETS.contains(&secret.trim())
}

/// `JWT_SECRET`, when set, must be long and not one the repository ever published.
fn check_jwt_secret(secret: &str) -> Result<(), ConfigError> {
    if is_shipped_secret(secret) {
        return Err(bad(
            "JWT_SECRET",
            "is an example value published in Natter's repository; \
             unset it (the cluster then generates its own) or use `openssl rand -base64 48`",
        ));
    }
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(bad("JWT_SECRET", "must be at least 32 bytes"));
    }
    Ok(())
}

fn parse_issuers(json: &str) -> Result<Vec<IssuerConfig>, ConfigError> {
    let issuers: Vec<IssuerConfig> =
        serde_json::from_str(json).map_err(|e| bad("JWT_ISSUERS", e))?;
    for issuer in &issuers {
        let refuse = |reason: &str| {
            bad(
                "JWT_ISSUERS",
                format!("issuer {:?} {reason}", issuer.issuer),
            )
        };
        if issuer.issuer == LOCAL_ISSUER {
            return Err(refuse("is Natter's own issuer"));
        }
        match (&issuer.jwks_url, &issuer.hs256_secret) {
            (Some(url), None) if !is_trusted_key_url(url) => {
                return Err(refuse(
                    "needs a jwks_url over https (plain http only on loopback)",
                ));
            }
            (None, Some(secret)) if secret.len() < MIN_HS256_SECRET_BYTES => {
                return Err(refuse("needs an hs256_secret of at least 32 bytes"));
            }
            (None, Some(secret)) if is_shipped_secret(secret) => {
                return Err(refuse(
                    "has an example hs256_secret published in Natter's repository",
                ));
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err(refuse("needs exactly one of jwks_url and hs256_secret")),
        }
    }
    Ok(issuers)
}

/// Whether signing keys fetched from `url` can be trusted: over TLS, or from this host.
fn is_trusted_key_url(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(|host| {
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost"
                || ip
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "natter".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const BASE: [(&str, &str); 3] = [
        ("DATABASE_URL", "postgres://u:p@localhost/db"),
        ("NATS_URL", "nats://localhost:4222"),
        ("JWT_SECRET", "an-operators-own-secret-of-32-bytes-or-more"),
    ];

    /// Parses `natter serve` flags with no environment but `pairs` given as flags.
    fn from_flags(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            settings: SettingsArgs,
        }
        let mut argv = vec!["natter".to_string()];
        for (name, value) in pairs {
            let flag = SettingsArgs::flag(name).unwrap().replace('_', "-");
            argv.push(format!("--{flag}={value}"));
        }
        Settings::from_args(&Cli::parse_from(argv).settings)
    }

    #[test]
    fn the_defaults_help_shows_are_the_defaults_the_settings_take() {
        let from_flags = from_flags(&BASE).unwrap();
        let from_env = Settings::from_lookup(env(&BASE)).unwrap();
        assert_eq!(format!("{from_flags:?}"), format!("{from_env:?}"));
    }

    #[test]
    fn an_error_names_the_flag_and_its_variable() {
        let mut pairs = BASE.to_vec();
        pairs.push(("SEND_BURST", "lots"));
        let err = from_flags(&pairs).unwrap_err();
        assert_eq!(err.name, "SEND_BURST");
        assert!(
            err.to_string().contains("--send-burst / SEND_BURST"),
            "{err}"
        );
    }

    #[test]
    fn a_complete_environment_parses_with_spec_defaults() {
        let s = Settings::from_lookup(env(&BASE)).unwrap();
        assert_eq!(s.listen_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(s.limits.max_text_chars, 4000);
        assert_eq!(s.limits.send_burst, 30);
    }

    #[test]
    fn cors_origins_are_a_list_of_origins_and_logs_default_to_json() {
        let s = Settings::from_lookup(env(&BASE)).unwrap();
        assert!(s.cors_origins.is_empty());
        assert_eq!(s.log_format, LogFormat::Json);
        let mut pairs = BASE.to_vec();
        pairs.push((
            "CORS_ALLOWED_ORIGINS",
            "https://chat.example.com/, http://localhost:3000",
        ));
        pairs.push(("LOG_FORMAT", "text"));
        let s = Settings::from_lookup(env(&pairs)).unwrap();
        assert_eq!(
            s.cors_origins,
            ["https://chat.example.com", "http://localhost:3000"]
        );
        assert_eq!(s.log_format, LogFormat::Text);
        for bad in ["chat.example.com", "https://", "https://a.com/path"] {
            let mut pairs = BASE.to_vec();
            pairs.push(("CORS_ALLOWED_ORIGINS", bad));
            let err = Settings::from_lookup(env(&pairs)).unwrap_err();
            assert_eq!(err.name, "CORS_ALLOWED_ORIGINS", "{bad}");
        }
    }

    #[test]
    fn webhooks_is_a_json_list_of_public_urls_with_whsec_secrets_and_known_events() {
        assert!(
            Settings::from_lookup(env(&BASE))
                .unwrap()
                .webhooks
                .is_empty()
        );
        let good = r#"[{"url": "https://hooks.example.com/a", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "events": ["room.created"]}]"#;
        let mut pairs = BASE.to_vec();
        pairs.push(("WEBHOOKS", good));
        let hooks = Settings::from_lookup(env(&pairs)).unwrap().webhooks;
        assert_eq!(
            hooks[0].events.as_deref(),
            Some(&["room.created".to_string()][..])
        );
        for bad in [
            "not json",
            r#"[{"url": "https://a.example.com", "secret": "hunter2"}]"#,
            r#"[{"url": "http://127.0.0.1:9/h", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]"#,
            r#"[{"url": "https://a.example.com", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "events": ["message.sent"]}]"#,
            r#"[{"url": "https://a.example.com", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "extra": 1}]"#,
        ] {
            let mut pairs = BASE.to_vec();
            pairs.push(("WEBHOOKS", bad));
            let err = Settings::from_lookup(env(&pairs)).unwrap_err();
            assert_eq!(err.name, "WEBHOOKS", "{bad}");
        }
        let mut pairs = BASE.to_vec();
        pairs.push(("WEBHOOKS", r#"[{"url": "http://127.0.0.1:9/h", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]"#));
        pairs.push(("WEBHOOK_ALLOW_PRIVATE", "true"));
        assert_eq!(
            Settings::from_lookup(env(&pairs)).unwrap().webhooks.len(),
            1
        );
    }

    #[test]
    fn the_send_hook_is_off_by_default_and_its_settings_are_checked() {
        assert!(
            Settings::from_lookup(env(&BASE))
                .unwrap()
                .send_hook
                .is_none()
        );
        let mut pairs = BASE.to_vec();
        pairs.push(("SEND_HOOK_URL", "https://moderation.internal/check"));
        let hook = Settings::from_lookup(env(&pairs))
            .unwrap()
            .send_hook
            .unwrap();
        assert_eq!(hook.timeout, Duration::from_millis(1000));
        assert!(!hook.fail_open && hook.secret.is_none());
        for (name, bad) in [
            ("SEND_HOOK_URL", "moderation.internal"),
            ("SEND_HOOK_SECRET", "hunter2"),
            ("SEND_HOOK_TIMEOUT_MS", "0"),
            ("SEND_HOOK_FAIL_OPEN", "yes"),
        ] {
            let mut pairs = pairs.clone();
            pairs.retain(|(key, _)| *key != name);
            pairs.push((name, bad));
            let err = Settings::from_lookup(env(&pairs)).unwrap_err();
            assert_eq!(err.name, name, "{bad}");
        }
    }

    #[test]
    fn a_debug_print_of_the_settings_shows_no_password_or_secret() {
        let mut pairs = BASE.to_vec();
        pairs.push(("NATS_URL", "nats://natter:nats-password@localhost:4222"));
        let printed = format!("{:?}", Settings::from_lookup(env(&pairs)).unwrap());
        assert!(printed.contains("node_id"), "{printed}");
        for secret in ["u:p@", "nats-password", "an-operators-own-secret"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
    }

    #[test]
    fn a_missing_setting_is_named() {
        let err = Settings::from_lookup(env(&BASE[..1])).unwrap_err();
        assert_eq!(err.name, "NATS_URL");
        assert!(err.to_string().contains("NATS_URL"));
    }

    #[test]
    fn without_jwt_secret_the_generated_key_is_used() {
        for pairs in [&BASE[..2], &[BASE[0], BASE[1], ("JWT_SECRET", "")]] {
            let settings = Settings::from_lookup(env(pairs)).unwrap();
            assert!(settings.auth.jwt_secret.is_none());
        }
    }

    #[test]
    fn a_short_or_shipped_jwt_secret_stops_start_up() {
        let mut shipped = SHIPPED_SECRETS.to_vec();
        shipped.push("x".repeat(31).leak());
        for secret in shipped {
            let err = Settings::from_lookup(env(&[BASE[0], BASE[1], ("JWT_SECRET", secret)]))
                .unwrap_err();
            assert_eq!(err.name, "JWT_SECRET", "{secret}");
            assert_eq!(err.to_string().lines().count(), 1);
        }
        let own = "x".repeat(32);
        let settings =
            Settings::from_lookup(env(&[BASE[0], BASE[1], ("JWT_SECRET", &own)])).unwrap();
        assert_eq!(settings.auth.jwt_secret.as_deref(), Some(own.as_str()));
    }

    #[test]
    fn a_bad_number_is_named() {
        let mut pairs = BASE.to_vec();
        pairs.push(("SEND_BURST", "lots"));
        assert_eq!(
            Settings::from_lookup(env(&pairs)).unwrap_err().name,
            "SEND_BURST"
        );
    }

    fn issuers_error(json: &str) -> Option<String> {
        let mut pairs = BASE.to_vec();
        pairs.push(("JWT_ISSUERS", json));
        Settings::from_lookup(env(&pairs))
            .err()
            .map(|err| format!("{}: {err}", err.name))
    }

    #[test]
    fn an_issuer_with_a_short_secret_a_plain_http_key_url_or_natters_own_name_is_refused() {
        let secret_31 = "x".repeat(31);
        let secret_32 = "x".repeat(32);
        let refused = [
            r#"[{"issuer":"a","audience":"b","hs256_secret":""}]"#.to_string(),
            format!(r#"[{{"issuer":"a","audience":"b","hs256_secret":"{secret_31}"}}]"#),
            r#"[{"issuer":"a","audience":"b","jwks_url":"http://keys.example.com/jwks"}]"#.into(),
            r#"[{"issuer":"a","audience":"b","jwks_url":"ftp://keys.example.com/jwks"}]"#.into(),
            r#"[{"issuer":"a","audience":"b","jwks_url":"not a url"}]"#.into(),
            format!(r#"[{{"issuer":"natter","audience":"b","hs256_secret":"{secret_32}"}}]"#),
        ];
        for json in refused {
            let err = issuers_error(&json).unwrap_or_else(|| panic!("{json} was accepted"));
            assert!(err.starts_with("JWT_ISSUERS"), "{err}");
        }
        let accepted = [
            format!(r#"[{{"issuer":"a","audience":"b","hs256_secret":"{secret_32}"}}]"#),
            r#"[{"issuer":"a","audience":"b","jwks_url":"https://keys.example.com/jwks"}]"#.into(),
            r#"[{"issuer":"a","audience":"b","jwks_url":"http://127.0.0.1:9000/jwks"}]"#.into(),
            r#"[{"issuer":"a","audience":"b","jwks_url":"http://localhost/jwks"}]"#.into(),
            r#"[{"issuer":"a","audience":"b","jwks_url":"http://[::1]:9000/jwks"}]"#.into(),
        ];
        for json in accepted {
            assert_eq!(issuers_error(&json), None, "{json}");
        }
    }

    #[test]
    fn an_issuer_needs_exactly_one_key_source() {
        let mut pairs = BASE.to_vec();
        pairs.push(("JWT_ISSUERS", r#"[{"issuer":"a","audience":"b"}]"#));
        assert_eq!(
            Settings::from_lookup(env(&pairs)).unwrap_err().name,
            "JWT_ISSUERS"
        );
    }
}
