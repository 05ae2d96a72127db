//! Settings, read from flags and the environment (SPEC §7).
//!
//! Every setting is declared once, in the table [`settings_args!`] reads below: its environment
//! variable, its flag, its type, its default, the parser that checks it and what it means.
//! From that one declaration come `natter serve --help`, the parsing (a bad or missing
//! setting stops start-up with a single line that names it instead of failing later under
//! load), the defaults ([`Limits::default`] included) and README.md's configuration table
//! ([`configuration_table`]). Checks that need two settings at once (webhooks and
//! `WEBHOOK_ALLOW_PRIVATE`, the send hook's group, the presence replicas) are made by
//! [`Settings::from_lookup`] after each setting has been parsed on its own.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;

/// The `iss` of tokens Natter signs itself; no external issuer may use it.
pub const LOCAL_ISSUER: &str = "natter";

/// Shortest shared secret accepted for HS256 (SPEC §10): 256 bits.
const MIN_HS256_SECRET_BYTES: usize = 32;

/// Everything a node needs to start. `Debug` leaves out the URLs, which may carry
/// passwords, and the collector's headers' values (the auth settings leave out their
/// secrets).
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
    /// before they are read from Postgres (`REORDER_WAIT_MS`).
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
    /// The balancers and proxies whose `X-Forwarded-For` names the client (SPEC §18);
    /// from any other peer the header is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which log events are written (`RUST_LOG`'s directives).
    pub log_filter: String,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Where spans go (`OTEL_EXPORTER_OTLP_ENDPOINT`, the collector's OTLP/HTTP base
    /// URL); no tracing without it.
    pub otlp_endpoint: Option<String>,
    /// Headers sent with every export to the collector (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub otlp_headers: OtlpHeaders,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// More attributes of the spans' resource (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
    /// Which traces are recorded (`OTEL_TRACES_SAMPLER`).
    pub traces_sampler: TracesSampler,
    /// The ratio of traces the `*traceidratio` samplers record
    /// (`OTEL_TRACES_SAMPLER_ARG`).
    pub traces_sampler_arg: f64,
    /// Whether the seeds' drop-in routes are served (SPEC §12, `COMPAT_ROUTES`).
    pub compat_routes: bool,
    /// Webhooks that receive every room's events (SPEC §11, `WEBHOOKS`).
    pub webhooks: Vec<crate::webhooks::ClusterWebhook>,
    /// Whether webhooks may target loopback, private and link-local addresses.
    pub webhook_allow_private: bool,
    /// The before-send moderation hook (SPEC §11), if `SEND_HOOK_URL` is set.
    pub send_hook: Option<crate::webhooks::send_hook::SendHookSettings>,
    /// Notifications (SPEC §14).
    pub push: PushSettings,
}

/// How notifications leave the cluster (SPEC §14).
#[derive(Clone, Debug, Default)]
pub struct PushSettings {
    /// `VAPID_PRIVATE_KEY`, with `VAPID_SUBJECT` as its contact; `None`: the cluster's
    /// generated key.
    pub vapid_key: Option<crate::push::vapid::VapidKey>,
    /// `VAPID_SUBJECT`, also the contact of a generated key.
    pub vapid_subject: Option<String>,
    /// `PUSH_GATEWAY_URL`.
    pub gateway_url: Option<String>,
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
            .field("trusted_proxies", &self.trusted_proxies)
            .field("send_hook", &self.send_hook)
            .field("push", &self.push)
            .field("compat_routes", &self.compat_routes)
            .field("webhooks", &self.webhooks.len())
            .field("webhook_allow_private", &self.webhook_allow_private)
            .field("log_filter", &self.log_filter)
            .field("log_format", &self.log_format)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("otlp_headers", &self.otlp_headers)
            .field("service_name", &self.service_name)
            .field("resource_attributes", &self.resource_attributes)
            .field("traces_sampler", &self.traces_sampler)
            .field("traces_sampler_arg", &self.traces_sampler_arg)
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

/// `ONLINE_USERS`: whom `GET /v1/presence` and `/api/online-users` list (SPEC §18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnlineUsers {
    /// Everyone online, as the seeds did.
    All,
    /// The caller and the users who share a room with them.
    Contacts,
}

/// `OTEL_TRACES_SAMPLER`: which traces are recorded, as the OpenTelemetry specification
/// names them (the ratio is `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracesSampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio,
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio,
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: sent with every export. Their values are credentials
/// (an API key, a bearer token), so `Debug` shows the names only.
#[derive(Clone, Default)]
pub struct OtlpHeaders(pub Vec<(HeaderName, HeaderValue)>);

impl std::fmt::Debug for OtlpHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
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

/// Input and rate limits; the defaults are those of SPEC §5, declared in the settings
/// table below.
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
    /// Typing events a socket's frames may broadcast per second (SPEC §18).
    pub typing_events_per_second: u32,
    /// Searches per second per user (SPEC §18).
    pub searches_per_second: u32,
    /// Read watermark moves (`read_upto`, `POST /rooms/{id}/read`) per second per user.
    pub reads_per_second: u32,
    /// Logins, registrations and requests without a credential per client address
    /// (SPEC §18).
    pub logins_per_minute_per_address: u32,
    pub registrations_per_minute_per_address: u32,
    pub unauthenticated_per_second_per_address: u32,
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
    /// Whom the lists of online users show (SPEC §18).
    pub online_users: OnlineUsers,
}

impl Default for Limits {
    /// The declared defaults.
    fn default() -> Self {
        Self::read(&|_| None).expect("the declared defaults parse (tested)")
    }
}

impl Limits {
    fn read(lookup: Lookup) -> Result<Self, ConfigError> {
        Ok(Self {
            max_text_chars: read::max_text_chars(lookup)?,
            max_body_bytes: read::max_body_bytes(lookup)?,
            sends_per_second: read::send_rate_per_sec(lookup)?,
            send_burst: read::send_burst(lookup)?,
            edits_per_second: read::edit_rate_per_sec(lookup)?,
            edit_burst: read::edit_burst(lookup)?,
            room_creations_per_minute: read::room_creations_per_min(lookup)?,
            subscribes_per_second: read::subscribe_rate_per_sec(lookup)?,
            typing_events_per_second: read::typing_rate_per_sec(lookup)?,
            searches_per_second: read::search_rate_per_sec(lookup)?,
            reads_per_second: read::read_rate_per_sec(lookup)?,
            logins_per_minute_per_address: read::logins_per_min_per_address(lookup)?,
            registrations_per_minute_per_address: read::registrations_per_min_per_address(lookup)?,
            unauthenticated_per_second_per_address: read::unauthenticated_per_sec_per_address(
                lookup,
            )?,
            sockets_per_user: read::max_sockets_per_user(lookup)?,
            max_frame_bytes: read::max_frame_bytes(lookup)?,
            max_rooms_per_socket: read::max_rooms_per_socket(lookup)?,
            outbound_queue: read::outbound_queue(lookup)?,
            request_read_timeout: Duration::from_secs(read::request_read_timeout_secs(lookup)?),
            online_users: read::online_users(lookup)?,
        })
    }
}

/// What a setting is when it is not given (or given blank).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Start-up stops without it.
    Required,
    /// Nothing: the feature it configures is off.
    None,
    /// This value, parsed as if it had been given.
    Value(&'static str),
    /// Worked out at start-up, as described.
    Derived(&'static str),
}

impl Fallback {
    /// The value clap fills in (and `--help` shows) when the flag and variable are absent.
    pub const fn value(self) -> Option<&'static str> {
        match self {
            Fallback::Value(value) => Some(value),
            _ => None,
        }
    }
}

/// One setting as declared: what `--help`, error messages and README.md show.
#[derive(Clone, Copy, Debug)]
pub struct Declared {
    /// The environment variable.
    pub variable: &'static str,
    /// The flag, without its leading `--`.
    pub flag: &'static str,
    pub fallback: Fallback,
    /// What it means, as written in its declaration (one line per source line).
    pub doc: &'static str,
}

impl Declared {
    /// What it means, on one line.
    pub fn meaning(&self) -> String {
        one_line(self.doc)
    }
}

/// A declaration's doc comment, its lines joined.
fn one_line(doc: &str) -> String {
    doc.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `--help`'s text for a setting: its meaning, and a default worked out at start-up
/// (clap shows a literal default itself).
fn help_text(doc: &str, fallback: Fallback) -> String {
    let meaning = one_line(doc);
    match fallback {
        Fallback::Derived(described) => format!("{meaning} [default: {described}]"),
        _ => meaning,
    }
}

/// How a setting's value is found: a flag or environment variable's value by the
/// variable's name.
type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Declares every setting once. Each entry is
///
/// ```text
/// /// What it means (for --help and README.md).
/// "VARIABLE" field_name: Type = fallback, parser;
/// ```
///
/// The flag is `--field-name`, which must be the variable in lower case (tested). The
/// fallback is `required`, `none` (the value is an `Option`), a literal default such as
/// `"16"` (parsed like a given value), or `["description"]` for a default worked out at
/// start-up (the value is an `Option`; `Settings::from_lookup` fills it in). The parser
/// is a `fn(&str) -> Result<Type, String>` whose error is the reason a value is refused;
/// it may not share a field's name (the generated `read::field` would shadow it).
///
/// Generated: [`SettingsArgs`] (the flags, each beside its variable), [`SETTINGS`] (the
/// declarations, for messages and the README) and `read::field_name(lookup)`, which
/// reads, parses and checks one setting and names it in its error.
macro_rules! settings_args {
    ($(
        $(#[doc = $doc:literal])*
        $env:literal $field:ident: $ty:ty = $fallback:tt, $parse:expr;
    )*) => {
        /// The node's settings as flags (`natter serve --help`), each beside its
        /// environment variable; flags win over variables. Values are never printed
        /// (some are secrets). All are strings here: [`Settings::from_args`] parses them,
        /// so a flag and its variable can never be read two ways.
        #[derive(Clone, Default, clap::Args)]
        pub struct SettingsArgs {
            $(
                #[arg(
                    long,
                    env = $env,
                    hide_env_values = true,
                    help = help_text(concat!($($doc, "\n"),*), settings_args!(@fallback $fallback)),
                    default_value = settings_args!(@fallback $fallback).value(),
                )]
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
        }

        /// Every setting, in the order `--help` and README.md list them.
        pub const SETTINGS: &[Declared] = &[
            $(
                Declared {
                    variable: $env,
                    flag: stringify!($field),
                    fallback: settings_args!(@fallback $fallback),
                    doc: concat!($($doc, "\n"),*),
                },
            )*
        ];

        /// One function per setting: reads it, parses it and checks it.
        mod read {
            use super::*;
            $(
                pub(super) fn $field(
                    lookup: Lookup,
                ) -> Result<settings_args!(@type $fallback $ty), ConfigError> {
                    settings_args!(@read lookup, $env, $fallback, $parse)
                }
            )*
        }
    };
    (@fallback required) => { Fallback::Required };
    (@fallback none) => { Fallback::None };
    (@fallback [$described:literal]) => { Fallback::Derived($described) };
    (@fallback $value:literal) => { Fallback::Value($value) };
    (@type required $ty:ty) => { $ty };
    (@type none $ty:ty) => { Option<$ty> };
    (@type [$described:literal] $ty:ty) => { Option<$ty> };
    (@type $value:literal $ty:ty) => { $ty };
    (@read $lookup:ident, $env:literal, required, $parse:expr) => {
        match given($lookup, $env) {
            Some(raw) => parse_as($env, &raw, $parse),
            None => Err(bad($env, "is required")),
        }
    };
    (@read $lookup:ident, $env:literal, $value:literal, $parse:expr) => {
        parse_as($env, &given($lookup, $env).unwrap_or_else(|| $value.into()), $parse)
    };
    (@read $lookup:ident, $env:literal, $optional:tt, $parse:expr) => {
        given($lookup, $env)
            .map(|raw| parse_as($env, &raw, $parse))
            .transpose()
    };
}

settings_args! {
    /// Postgres URL; for a highly available Postgres list every member and ask for the
    /// writable one: `postgres://u:p@pg1:5432,pg2:5432/natter?target_session_attrs=read-write`
    /// (see [Postgres failover](docs/RELIABILITY.md#postgres-failover)); TLS with
    /// `sslmode=require`
    "DATABASE_URL" database_url: String = required, postgres_url;
    /// a file with the password of the user `DATABASE_URL` (and `DATABASE_READ_URL`)
    /// names (`postgres://natter@host/natter`): compose generates one
    "DATABASE_PASSWORD_FILE" database_password_file: PathBuf = none, readable_file;
    /// NATS server(s), comma-separated for a cluster; may carry a user and password or a
    /// token (`nats://natter:…@host:4222`), `tls://` for TLS
    "NATS_URL" nats_url: String = required, text;
    /// a file with the password of the user `NATS_URL` names (`nats://natter@host`):
    /// compose generates one, k8s mounts the Secret `nats-auth`
    "NATS_PASSWORD_FILE" nats_password_file: PathBuf = none, readable_file;
    /// a NATS `.creds` file (decentralised auth: user JWT and nkey seed)
    "NATS_CREDS_FILE" nats_creds_file: PathBuf = none, readable_file;
    /// CA (PEM) to verify the NATS servers with; implies TLS
    "NATS_CA_FILE" nats_ca_file: PathBuf = none, readable_file;
    /// signs Natter's own HS256 tokens; unset, the cluster generates a 256-bit key on
    /// first start and keeps it in Postgres; set, at least 32 bytes and none of the
    /// examples this repository ever published
    "JWT_SECRET" jwt_secret: String = ["generated"], signing_secret;
    /// JSON list of external issuers: `{"issuer","audience","jwks_url"}` or
    /// `{"issuer","audience","hs256_secret"}`
    "JWT_ISSUERS" jwt_issuers: Vec<IssuerConfig> = none, issuers;
    /// lifetime of Natter's tokens, in seconds
    "JWT_TTL_SECS" jwt_ttl_secs: u64 = "86400", positive;
    /// HTTP listen address
    "LISTEN_ADDR" listen_addr: SocketAddr = "0.0.0.0:8080", parsed;
    /// serve `/metrics` on this address instead of `LISTEN_ADDR` (compose and k8s use
    /// `0.0.0.0:9090`, which neither the balancer nor the Ingress routes)
    "METRICS_ADDR" metrics_addr: SocketAddr = none, parsed;
    /// names the node in logs, metrics and presence; unique among running nodes, and
    /// kept across a restart, so the restarted node clears its dead run's presence at
    /// once instead of after `PRESENCE_TTL_SECS`
    "NODE_ID" node_id: String = ["host name"], text;
    /// Postgres connections per node (and per node to the standby, if any)
    "DATABASE_POOL_SIZE" database_pool_size: usize = "16", positive;
    /// a streaming standby for history pages, search and `/me/rooms`, used for a read
    /// only once it has replayed the primary's position at the read's start, so no
    /// acknowledged message is ever missing
    /// ([details](docs/RELIABILITY.md#postgres-failover)); `target_session_attrs=read-only`
    /// picks a standby from a list
    "DATABASE_READ_URL" database_read_url: String = none, postgres_url;
    /// extra CA (PEM) for Postgres TLS; TLS is on with `sslmode=require` in the URL
    "DATABASE_CA_FILE" database_ca_file: PathBuf = none, readable_file;
    /// longest message, in characters
    "MAX_TEXT_CHARS" max_text_chars: usize = "4000", positive;
    /// largest request body, in bytes (`413` beyond)
    "MAX_BODY_BYTES" max_body_bytes: usize = "65536", positive;
    /// per-user send budget: sustained sends per second
    "SEND_RATE_PER_SEC" send_rate_per_sec: f64 = "10", positive;
    /// per-user send budget: sends at once before the rate applies
    "SEND_BURST" send_burst: u32 = "30", positive;
    /// per-user budget shared by edits, deletes and reaction changes: sustained per second
    "EDIT_RATE_PER_SEC" edit_rate_per_sec: f64 = "20", positive;
    /// per-user budget shared by edits, deletes and reaction changes: at once
    "EDIT_BURST" edit_burst: u32 = "60", positive;
    /// rooms and direct rooms a user may create (or open) per minute
    "ROOM_CREATIONS_PER_MIN" room_creations_per_min: u32 = "30", positive;
    /// subscribes and unsubscribes per second per socket
    "SUBSCRIBE_RATE_PER_SEC" subscribe_rate_per_sec: u32 = "100", positive;
    /// typing events a socket may broadcast per second; further frames are acked only
    "TYPING_RATE_PER_SEC" typing_rate_per_sec: u32 = "5", positive;
    /// searches per second per user
    "SEARCH_RATE_PER_SEC" search_rate_per_sec: u32 = "5", positive;
    /// read watermark moves (`read_upto`, `POST /rooms/{id}/read`) per second per user
    "READ_RATE_PER_SEC" read_rate_per_sec: u32 = "20", positive;
    /// logins per minute per client address (an IPv6 /64 counts as one)
    "LOGINS_PER_MIN_PER_ADDRESS" logins_per_min_per_address: u32 = "10", positive;
    /// registrations per minute per client address
    "REGISTRATIONS_PER_MIN_PER_ADDRESS" registrations_per_min_per_address: u32 = "5", positive;
    /// requests per second per client address that carry no credential (health checks
    /// excepted), or whose credential is refused
    "UNAUTHENTICATED_PER_SEC_PER_ADDRESS" unauthenticated_per_sec_per_address: u32 = "100", positive;
    /// open sockets per user on one node; the next upgrade is `429 too_many_sockets`
    "MAX_SOCKETS_PER_USER" max_sockets_per_user: usize = "50", positive;
    /// first token of subjects and of the presence bucket's name: letters, digits, `_`
    /// or `-`
    "NATS_PREFIX" nats_prefix: String = "natter", subject_token;
    /// seconds a dead node's connections stay present (10: its users are offline
    /// everywhere within 15 s, SPEC §1.6, with room for JetStream's expiry timer)
    "PRESENCE_TTL_SECS" presence_ttl_secs: u64 = "10", positive;
    /// replicas of the presence KV bucket
    "PRESENCE_REPLICAS" presence_replicas: usize = ["number of `NATS_URL` servers, at most 5"], positive;
    /// milliseconds a message that reached a node ahead of an earlier one waits for it
    /// before the gap is read from Postgres (NATS delivers in well under a millisecond
    /// when a node keeps up, in tens when it is saturated; a real loss costs its room
    /// this much latency once)
    "REORDER_WAIT_MS" reorder_wait_ms: u64 = "100", positive;
    /// largest WebSocket message, in bytes (close 1009 beyond)
    "MAX_FRAME_BYTES" max_frame_bytes: usize = "65536", positive;
    /// subscriptions per socket
    "MAX_ROOMS_PER_SOCKET" max_rooms_per_socket: usize = "1000", positive;
    /// events queued per socket before it is closed with 4008
    "OUTBOUND_QUEUE" outbound_queue: usize = "1024", positive;
    /// seconds a client gets to send one HTTP request or WebSocket handshake (slowloris)
    "REQUEST_READ_TIMEOUT_SECS" request_read_timeout_secs: u64 = "10", positive;
    /// whom `GET /v1/presence` and `/api/online-users` list: `all` online users, or
    /// `contacts`, the caller and those who share a room with them
    "ONLINE_USERS" online_users: OnlineUsers = "all", all_or_contacts;
    /// comma-separated addresses or CIDRs of the balancers and proxies in front of the
    /// node (compose: its network; k8s: the ingress controller's pods): from these
    /// peers the client's address is read from `X-Forwarded-For`, from any other the
    /// header is ignored
    "TRUSTED_PROXIES" trusted_proxies: Vec<ipnet::IpNet> = none, networks;
    /// comma-separated browser origins allowed to call the API cross-origin
    "CORS_ALLOWED_ORIGINS" cors_allowed_origins: Vec<String> = none, origins;
    /// log filter (`tracing` directives)
    "RUST_LOG" rust_log: String = "info", log_filter;
    /// `json`: one object per line with `node_id` and `trace_id`; `text` for a terminal
    "LOG_FORMAT" log_format: LogFormat = "json", json_or_text;
    /// OTLP/HTTP collector base URL (e.g. `http://otel-collector:4318`); spans are
    /// exported as JSON to `/v1/traces`
    "OTEL_EXPORTER_OTLP_ENDPOINT" otel_exporter_otlp_endpoint: String = none, http_url;
    /// `key=value,…` headers sent with every export (an API key, say; values
    /// percent-encoded), never logged
    "OTEL_EXPORTER_OTLP_HEADERS" otel_exporter_otlp_headers: OtlpHeaders = none, otlp_headers;
    /// `service.name` of the spans
    "OTEL_SERVICE_NAME" otel_service_name: String = "natter", text;
    /// `key=value,…` attributes of the spans' resource (values percent-encoded), e.g.
    /// `deployment.environment=prod`; `OTEL_SERVICE_NAME` wins over a `service.name` here
    "OTEL_RESOURCE_ATTRIBUTES" otel_resource_attributes: Vec<(String, String)> = none, key_values;
    /// which traces are recorded: `always_on`, `always_off`, `traceidratio`,
    /// `parentbased_always_on`, `parentbased_always_off` or `parentbased_traceidratio`
    "OTEL_TRACES_SAMPLER" otel_traces_sampler: TracesSampler = "parentbased_always_on", sampler;
    /// the ratio of traces (0 to 1) the `traceidratio` samplers record
    "OTEL_TRACES_SAMPLER_ARG" otel_traces_sampler_arg: f64 = "1", ratio;
    /// serve the original backends' paths and socket frames (`/rooms/`, `/api/chats`,
    /// `/ws/...`; SPEC §12) beside `/v1`
    "COMPAT_ROUTES" compat_routes: bool = "true", boolean;
    /// JSON list of cluster-wide webhooks, `{"url", "secret": "whsec_…", "events"?}`:
    /// every room's events (and `room.created`)
    "WEBHOOKS" webhooks: String = none, text;
    /// let webhooks target loopback, private and link-local addresses (local development)
    "WEBHOOK_ALLOW_PRIVATE" webhook_allow_private: bool = "false", boolean;
    /// the before-send moderation hook, an http(s) URL asked about every message before
    /// it is stored
    "SEND_HOOK_URL" send_hook_url: String = none, http_url;
    /// `whsec_…`: signs the hook's requests
    "SEND_HOOK_SECRET" send_hook_secret: crate::webhooks::signing::Secret = none, hook_secret;
    /// milliseconds a send waits for the hook
    "SEND_HOOK_TIMEOUT_MS" send_hook_timeout_ms: u64 = "1000", positive;
    /// `true`: store the message when the hook fails or times out (default: `503`)
    "SEND_HOOK_FAIL_OPEN" send_hook_fail_open: bool = "false", boolean;
    /// the P-256 key that signs Web Push requests (VAPID): a PEM `PRIVATE KEY` (PKCS#8)
    /// or its DER in base64url; unset, the cluster generates one on first start and
    /// keeps it in Postgres
    "VAPID_PRIVATE_KEY" vapid_private_key: crate::push::vapid::VapidKey = ["generated"], vapid_key;
    /// how push services reach the operator, a `mailto:` or `https:` URL, sent as the
    /// VAPID token's `sub`
    "VAPID_SUBJECT" vapid_subject: String = none, contact_url;
    /// base URL of a Gorush-compatible push gateway for `fcm` and `apns` devices;
    /// unset, such devices cannot be registered
    "PUSH_GATEWAY_URL" push_gateway_url: String = none, http_url;
}

/// A setting that is missing or cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {}: {reason}", flag_and_variable(name))]
pub struct ConfigError {
    /// The environment variable (its flag is named in the message too).
    pub name: &'static str,
    pub reason: String,
}

/// The flag that sets the environment variable `name` (`--send-burst`), if declared.
pub fn flag(name: &str) -> Option<String> {
    SETTINGS
        .iter()
        .find(|setting| setting.variable == name)
        .map(|setting| format!("--{}", setting.flag.replace('_', "-")))
}

/// `--flag-name / VARIABLE_NAME`, or the variable alone if it has no flag.
fn flag_and_variable(name: &str) -> String {
    match flag(name) {
        Some(flag) => format!("{flag} / {name}"),
        None => name.to_string(),
    }
}

/// README.md's configuration table, in Markdown, from the declarations.
pub fn configuration_table() -> String {
    let mut table = String::from("| Variable | Default | Meaning |\n|---|---|---|\n");
    for setting in SETTINGS {
        let default = match setting.fallback {
            Fallback::Required => "required".to_string(),
            Fallback::None => "none".to_string(),
            Fallback::Value(value) => format!("`{value}`"),
            Fallback::Derived(described) => described.to_string(),
        };
        table.push_str(&format!(
            "| `{}` | {default} | {} |\n",
            setting.variable,
            setting.meaning()
        ));
    }
    table
}

impl Settings {
    /// Reads settings from the command line's flags and, for each flag not given, its
    /// environment variable (clap reads those into `args`).
    pub fn from_args(args: &SettingsArgs) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| args.get(name))
    }

    /// Reads settings through `lookup` (a variable's name to its value), so tests can
    /// supply their own environment. A blank value is the same as none.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let lookup: Lookup = &lookup;
        let password = match read::database_password_file(lookup)? {
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| bad("DATABASE_PASSWORD_FILE", e))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let with_password = |url: String| match &password {
            Some(password) => {
                with_url_password(&url, password).map_err(|e| bad("DATABASE_PASSWORD_FILE", e))
            }
            None => Ok(url),
        };
        let database_url = with_password(read::database_url(lookup)?)?;
        let database_read_url = read::database_read_url(lookup)?
            .map(with_password)
            .transpose()?;
        let nats_url = read::nats_url(lookup)?;
        let servers = nats_url.split(',').count().min(5);
        let webhook_allow_private = read::webhook_allow_private(lookup)?;
        let webhooks = match read::webhooks(lookup)? {
            Some(json) => crate::webhooks::parse_cluster_webhooks(&json, webhook_allow_private)
                .map_err(|e| bad("WEBHOOKS", e))?,
            None => Vec::new(),
        };
        // The hook's other settings are checked even while it is off, so a mistake shows
        // before the day it is switched on.
        let send_hook_secret = read::send_hook_secret(lookup)?;
        let send_hook_timeout = Duration::from_millis(read::send_hook_timeout_ms(lookup)?);
        let send_hook_fail_open = read::send_hook_fail_open(lookup)?;
        let vapid_subject = read::vapid_subject(lookup)?;
        let send_hook =
            read::send_hook_url(lookup)?.map(|url| crate::webhooks::send_hook::SendHookSettings {
                url,
                secret: send_hook_secret,
                timeout: send_hook_timeout,
                fail_open: send_hook_fail_open,
            });
        Ok(Self {
            database_url,
            database_pool_size: read::database_pool_size(lookup)?,
            database_ca_file: read::database_ca_file(lookup)?,
            database_read_url,
            nats_url,
            nats_prefix: read::nats_prefix(lookup)?,
            nats_auth: NatsAuth {
                creds_file: read::nats_creds_file(lookup)?,
                password_file: read::nats_password_file(lookup)?,
                ca_file: read::nats_ca_file(lookup)?,
            },
            presence_ttl: Duration::from_secs(read::presence_ttl_secs(lookup)?),
            presence_replicas: read::presence_replicas(lookup)?.unwrap_or(servers),
            reorder_wait: Duration::from_millis(read::reorder_wait_ms(lookup)?),
            listen_addr: read::listen_addr(lookup)?,
            metrics_addr: read::metrics_addr(lookup)?,
            node_id: read::node_id(lookup)?.unwrap_or_else(hostname),
            auth: AuthSettings {
                jwt_secret: read::jwt_secret(lookup)?,
                token_ttl: Duration::from_secs(read::jwt_ttl_secs(lookup)?),
                issuers: read::jwt_issuers(lookup)?.unwrap_or_default(),
            },
            limits: Limits::read(lookup)?,
            cors_origins: read::cors_allowed_origins(lookup)?.unwrap_or_default(),
            trusted_proxies: read::trusted_proxies(lookup)?.unwrap_or_default(),
            log_filter: read::rust_log(lookup)?,
            log_format: read::log_format(lookup)?,
            otlp_endpoint: read::otel_exporter_otlp_endpoint(lookup)?,
            otlp_headers: read::otel_exporter_otlp_headers(lookup)?.unwrap_or_default(),
            service_name: read::otel_service_name(lookup)?,
            resource_attributes: read::otel_resource_attributes(lookup)?.unwrap_or_default(),
            traces_sampler: read::otel_traces_sampler(lookup)?,
            traces_sampler_arg: read::otel_traces_sampler_arg(lookup)?,
            compat_routes: read::compat_routes(lookup)?,
            webhooks,
            webhook_allow_private,
            send_hook,
            push: PushSettings {
                vapid_key: read::vapid_private_key(lookup)?
                    .map(|key| key.with_subject(vapid_subject.clone())),
                vapid_subject,
                gateway_url: read::push_gateway_url(lookup)?,
            },
        })
    }
}

fn bad(name: &'static str, err: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        name,
        reason: err.to_string(),
    }
}

/// The value given for `name`; a blank one is the same as none.
fn given(lookup: Lookup, name: &str) -> Option<String> {
    lookup(name).filter(|value| !value.trim().is_empty())
}

/// `raw` parsed by `parse`, its error naming the setting `name`.
fn parse_as<T>(
    name: &'static str,
    raw: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    parse(raw).map_err(|reason| bad(name, reason))
}

// The parsers the settings table names: each takes the value as given and returns it
// parsed, or why it cannot be used.

fn text(raw: &str) -> Result<String, String> {
    Ok(raw.to_string())
}

/// Anything with a `FromStr` (an address, say), around whitespace.
fn parsed<T: std::str::FromStr>(raw: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    raw.trim().parse().map_err(|e: T::Err| e.to_string())
}

/// A number greater than zero.
fn positive<T>(raw: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + Default,
    T::Err: std::fmt::Display,
{
    let value: T = parsed(raw)?;
    if value <= T::default() {
        return Err("must be greater than zero".into());
    }
    Ok(value)
}

/// A fraction from 0 to 1.
fn ratio(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err("must be a number from 0 to 1".into()),
    }
}

fn boolean(raw: &str) -> Result<bool, String> {
    match raw.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

fn postgres_url(raw: &str) -> Result<String, String> {
    raw.parse::<tokio_postgres::Config>()
        .map_err(|e| e.to_string())?;
    Ok(raw.to_string())
}

/// `url` (`postgres://user@host/db`) with `password` added to its user, percent-encoded.
fn with_url_password(url: &str, password: &str) -> Result<String, String> {
    let needs = "needs DATABASE_URL to name a user and no password (postgres://natter@host/db)";
    let (scheme, rest) = url.split_once("://").ok_or(needs)?;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let at = authority.rfind('@').ok_or(needs)?;
    if authority[..at].contains(':') {
        return Err(needs.into());
    }
    let encoded: String = password
        .bytes()
        .map(
            |b| match b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                true => (b as char).to_string(),
                false => format!("%{b:02X}"),
            },
        )
        .collect();
    Ok(format!(
        "{scheme}://{}:{encoded}{}",
        &rest[..at],
        &rest[at..]
    ))
}

fn http_url(raw: &str) -> Result<String, String> {
    match raw.starts_with("http://") || raw.starts_with("https://") {
        true => Ok(raw.to_string()),
        false => Err("must be an http(s) URL".into()),
    }
}

fn readable_file(raw: &str) -> Result<PathBuf, String> {
    match std::path::Path::new(raw).is_file() {
        true => Ok(PathBuf::from(raw)),
        false => Err("is not a readable file".into()),
    }
}

fn subject_token(raw: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    match raw.chars().all(allowed) {
        true => Ok(raw.to_string()),
        false => Err("must be letters, digits, '_' or '-'".into()),
    }
}

/// Browser origins (`https://chat.example.com`), comma-separated; a trailing `/` is
/// dropped.
fn origins(raw: &str) -> Result<Vec<String>, String> {
    raw.split(',')
        .map(|origin| origin.trim().trim_end_matches('/').to_string())
        .filter(|origin| !origin.is_empty())
        .map(|origin| {
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            match host.is_some_and(|host| !host.is_empty() && !host.contains('/')) {
                true => Ok(origin),
                false => Err(format!(
                    "{origin:?} is not an origin like https://chat.example.com"
                )),
            }
        })
        .collect()
}

/// Addresses or CIDRs (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`), comma-separated.
fn networks(raw: &str) -> Result<Vec<ipnet::IpNet>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|network| !network.is_empty())
        .map(|network| {
            network
                .parse::<ipnet::IpNet>()
                .or_else(|_| network.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|network| network.trunc())
                .map_err(|_| format!("{network:?} is not an address or a CIDR like 10.0.0.0/8"))
        })
        .collect()
}

fn log_filter(raw: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(raw).map_err(|e| e.to_string())?;
    Ok(raw.to_string())
}

fn json_or_text(raw: &str) -> Result<LogFormat, String> {
    match raw.trim() {
        "json" => Ok(LogFormat::Json),
        "text" => Ok(LogFormat::Text),
        _ => Err("must be json or text".into()),
    }
}

fn all_or_contacts(raw: &str) -> Result<OnlineUsers, String> {
    match raw.trim() {
        "all" => Ok(OnlineUsers::All),
        "contacts" => Ok(OnlineUsers::Contacts),
        _ => Err("must be all or contacts".into()),
    }
}

fn sampler(raw: &str) -> Result<TracesSampler, String> {
    Ok(match raw.trim() {
        "always_on" => TracesSampler::AlwaysOn,
        "always_off" => TracesSampler::AlwaysOff,
        "traceidratio" => TracesSampler::TraceIdRatio,
        "parentbased_always_on" => TracesSampler::ParentBasedAlwaysOn,
        "parentbased_always_off" => TracesSampler::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => TracesSampler::ParentBasedTraceIdRatio,
        other => {
            return Err(format!(
                "{other:?} is not one of always_on, always_off, traceidratio, \
                 parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
            ));
        }
    })
}

/// `key=value,…` as the OpenTelemetry variables write it: values percent-encoded, blank
/// entries skipped.
fn key_values(raw: &str) -> Result<Vec<(String, String)>, String> {
    raw.split(',')
        .map(str::trim)
        .enumerate()
        .filter(|(_, entry)| !entry.is_empty())
        .map(|(i, entry)| {
            // Not the entry itself: it may hold a secret.
            let (key, value) = entry
                .split_once('=')
                .filter(|(key, _)| !key.trim().is_empty())
                .ok_or_else(|| format!("entry {} is not key=value", i + 1))?;
            let value = percent_decode(value.trim())
                .ok_or_else(|| format!("the value of {:?} is not percent-encoded", key.trim()))?;
            Ok((key.trim().to_string(), value))
        })
        .collect()
}

/// `%XX` escapes decoded, or `None` if one is malformed or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            decoded.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// HTTP headers, `key=value,…`; a value is never repeated in an error.
fn otlp_headers(raw: &str) -> Result<OtlpHeaders, String> {
    let headers = key_values(raw)?
        .into_iter()
        .map(|(key, value)| {
            let name = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| format!("{key:?} is not a header name"))?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| format!("the value of {key:?} is not a header value"))?;
            value.set_sensitive(true);
            Ok((name, value))
        })
        .collect::<Result<_, String>>()?;
    Ok(OtlpHeaders(headers))
}

fn hook_secret(raw: &str) -> Result<crate::webhooks::signing::Secret, String> {
    crate::webhooks::signing::Secret::parse(raw).map_err(String::from)
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
fn signing_secret(secret: &str) -> Result<String, String> {
    if is_shipped_secret(secret) {
        return Err("is an example value published in Natter's repository; \
             unset it (the cluster then generates its own) or use `openssl rand -base64 48`"
            .into());
    }
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err("must be at least 32 bytes".into());
    }
    Ok(secret.to_string())
}

fn vapid_key(raw: &str) -> Result<crate::push::vapid::VapidKey, String> {
    crate::push::vapid::VapidKey::parse(raw, None).map_err(|err| err.to_string())
}

fn contact_url(raw: &str) -> Result<String, String> {
    match raw.starts_with("mailto:") || raw.starts_with("https://") {
        true => Ok(raw.to_string()),
        false => Err("must be a mailto: or https: URL".into()),
    }
}

fn issuers(json: &str) -> Result<Vec<IssuerConfig>, String> {
    let issuers: Vec<IssuerConfig> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    for issuer in &issuers {
        let refuse = |reason: &str| format!("issuer {:?} {reason}", issuer.issuer);
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

    /// Parses `natter serve` flags with `pairs` given as flags (clap also reads the
    /// process's environment, as `natter` does).
    fn from_flags(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            settings: SettingsArgs,
        }
        let mut argv = vec!["natter".to_string()];
        for (name, value) in pairs {
            argv.push(format!("{}={value}", flag(name).unwrap()));
        }
        Settings::from_args(&Cli::parse_from(argv).settings)
    }

    #[test]
    fn a_database_password_file_fills_in_the_password_of_every_database_url() {
        let path = std::env::temp_dir().join(format!("natter-pg-password-{}", std::process::id()));
        std::fs::write(&path, "s3cr@t/:x%\n").unwrap();
        let file = path.to_str().unwrap();
        let urls = [
            (
                "DATABASE_URL",
                "postgres://natter@pg1:5432,pg2:5432/natter?target_session_attrs=read-write",
            ),
            ("DATABASE_READ_URL", "postgresql://natter@standby/natter"),
        ];
        let mut pairs = BASE.to_vec();
        pairs.retain(|(name, _)| *name != "DATABASE_URL");
        pairs.extend(urls);
        pairs.push(("DATABASE_PASSWORD_FILE", file));
        let settings = Settings::from_lookup(env(&pairs)).unwrap();
        for url in [settings.database_url, settings.database_read_url.unwrap()] {
            let config: tokio_postgres::Config = url.parse().unwrap();
            assert_eq!(config.get_user(), Some("natter"), "{url}");
            assert_eq!(config.get_password(), Some(&b"s3cr@t/:x%"[..]), "{url}");
        }
        // A URL with a password of its own, or with no user, is a mistake.
        for url in ["postgres://natter:other@pg/natter", "postgres://pg/natter"] {
            let mut pairs = pairs.clone();
            pairs.retain(|(name, _)| *name != "DATABASE_URL" && *name != "DATABASE_READ_URL");
            pairs.push(("DATABASE_URL", url));
            let err = Settings::from_lookup(env(&pairs)).unwrap_err();
            assert_eq!(err.name, "DATABASE_PASSWORD_FILE", "{url}");
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn the_defaults_help_shows_are_the_defaults_the_settings_take() {
        let from_flags = from_flags(&BASE).unwrap();
        // The same environment: `pairs`, and whatever this process has (RUST_LOG, say).
        let from_env =
            Settings::from_lookup(|name| env(&BASE)(name).or_else(|| std::env::var(name).ok()))
                .unwrap();
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

    #[test]
    fn every_flag_is_its_variable_in_lower_case_and_every_setting_is_documented() {
        for setting in SETTINGS {
            assert_eq!(setting.flag.to_uppercase(), setting.variable);
            assert!(!setting.meaning().is_empty(), "{}", setting.variable);
            assert!(
                !setting.doc.contains('|'),
                "{}: a | breaks the README's table",
                setting.variable
            );
        }
        let mut variables: Vec<_> = SETTINGS.iter().map(|s| s.variable).collect();
        variables.sort();
        variables.dedup();
        assert_eq!(variables.len(), SETTINGS.len());
    }

    #[test]
    fn every_declared_default_parses_and_limits_default_to_them() {
        // `Settings::from_lookup` parses every default that is not overridden.
        Settings::from_lookup(env(&BASE)).unwrap();
        let limits = Limits::default();
        assert_eq!(limits.max_text_chars, 4000);
        assert_eq!(limits.max_body_bytes, 64 * 1024);
        assert_eq!(limits.sends_per_second, 10.0);
        assert_eq!(limits.request_read_timeout, Duration::from_secs(10));
    }

    #[test]
    fn a_blank_value_is_the_same_as_none() {
        let mut pairs = BASE.to_vec();
        pairs.extend([("SEND_BURST", " "), ("LISTEN_ADDR", ""), ("NODE_ID", "")]);
        let s = Settings::from_lookup(env(&pairs)).unwrap();
        assert_eq!(s.limits.send_burst, 30);
        assert_eq!(s.listen_addr.to_string(), "0.0.0.0:8080");
        assert!(!s.node_id.is_empty());
    }

    /// README.md's configuration table is [`configuration_table`]'s: they cannot drift.
    /// `NATTER_UPDATE_README=1` writes it there instead of comparing.
    #[test]
    fn the_readme_lists_the_declared_settings() {
        const BEGIN: &str = "<!-- settings:begin (generated from src/config.rs) -->\n";
        const END: &str = "<!-- settings:end -->";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let start = readme
            .find(BEGIN)
            .expect("README.md has the settings:begin marker")
            + BEGIN.len();
        let end = start
            + readme[start..]
                .find(END)
                .expect("and the settings:end marker");
        let table = configuration_table();
        if std::env::var_os("NATTER_UPDATE_README").is_some() {
            let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
            std::fs::write(path, updated).unwrap();
        } else {
            assert!(
                readme[start..end] == table,
                "README.md's configuration table is not the declared one; \
                 NATTER_UPDATE_README=1 cargo nextest run --lib config writes it:\n{table}"
            );
        }
    }

    #[test]
    fn the_standard_otel_variables_are_parsed_and_checked() {
        let s = Settings::from_lookup(env(&BASE)).unwrap();
        assert_eq!(s.traces_sampler, TracesSampler::ParentBasedAlwaysOn);
        assert_eq!(s.traces_sampler_arg, 1.0);
        assert!(s.resource_attributes.is_empty() && s.otlp_headers.0.is_empty());
        let mut pairs = BASE.to_vec();
        pairs.extend([
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod, team=chat%2Cops,,",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=key-secret-1,authorization=Bearer%20token-secret-2",
            ),
        ]);
        let s = Settings::from_lookup(env(&pairs)).unwrap();
        assert_eq!(s.traces_sampler, TracesSampler::ParentBasedTraceIdRatio);
        assert_eq!(s.traces_sampler_arg, 0.25);
        assert_eq!(
            s.resource_attributes,
            [
                ("deployment.environment".into(), "prod".into()),
                ("team".into(), "chat,ops".into())
            ]
        );
        let (name, value) = &s.otlp_headers.0[1];
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer token-secret-2")
        );
        let printed = format!("{s:?}");
        assert!(printed.contains("x-api-key"), "{printed}");
        assert!(
            !printed.contains("secret-1") && !printed.contains("secret-2"),
            "{printed}"
        );
        for (name, bad) in [
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ("OTEL_TRACES_SAMPLER_ARG", "half"),
            ("OTEL_RESOURCE_ATTRIBUTES", "team"),
            ("OTEL_RESOURCE_ATTRIBUTES", "=prod"),
            ("OTEL_RESOURCE_ATTRIBUTES", "team=%zz"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "bad header=1"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=line%0Abreak"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Bearer hunter2"),
            ("RUST_LOG", "info,[["),
        ] {
            let mut pairs = BASE.to_vec();
            pairs.push((name, bad));
            let err = Settings::from_lookup(env(&pairs)).unwrap_err();
            assert_eq!(err.name, name, "{bad}");
            let message = err.to_string();
            assert_eq!(message.lines().count(), 1, "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }
}
