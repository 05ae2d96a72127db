//! The before-send hook (SPEC §11): a moderation service the node asks, before a message
//! is stored, whether to store it as is, refuse it or store other text.
//!
//! One POST per send, signed like every webhook, bounded by `SEND_HOOK_TIMEOUT_MS`; no
//! redirects. What the hook decides is only advice until the message commits: the use
//! case (`Chat::send`) applies it, and answers a retry of a stored `client_msg_id`
//! without asking again.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::signing::{self, Secret};
use crate::histogram::LatencyHistogram;

/// Where and how the before-send hook is asked (SPEC §11).
#[derive(Clone, Debug)]
pub struct SendHookSettings {
    pub url: String,
    /// Signs each request when set (`SEND_HOOK_SECRET`, `whsec_…`).
    pub secret: Option<Secret>,
    /// How long a send waits for the verdict.
    pub timeout: Duration,
    /// Whether a send goes through when the hook fails or times out.
    pub fail_open: bool,
}

/// What the node asks the hook about: a new message, or (`edit: true`) the new text of
/// the message `message_id` (SPEC §15: an edit cannot slip past what a send could not).
#[derive(Serialize)]
pub struct Proposed<'a> {
    pub room_id: Uuid,
    pub sender_id: Uuid,
    pub text: &'a str,
    pub client_msg_id: Option<&'a str>,
    pub reply_to: Option<Uuid>,
    /// The message edited; absent for a send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Uuid>,
    pub edit: bool,
}

/// The hook's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Reject { reason: String },
    Modify { text: String },
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Answer {
    Allow,
    Reject {
        #[serde(default)]
        reason: Option<String>,
    },
    Modify {
        text: String,
    },
}

/// The hook gave no usable answer in time.
#[derive(Debug, thiserror::Error)]
pub enum HookFailed {
    #[error("the send hook did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the send hook failed: {0}")]
    Failed(String),
}

/// Hook calls by outcome (`allow`, `reject`, `modify`, `timeout`, `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// The hook's client and its metrics.
pub struct SendHook {
    settings: SendHookSettings,
    http: reqwest::Client,
    pub latency: LatencyHistogram,
    pub outcomes: Family<OutcomeLabel, Counter>,
}

/// The longest `reason` passed on to the sender.
const MAX_REASON_CHARS: usize = 500;

impl SendHook {
    pub fn new(settings: SendHookSettings) -> Self {
        // Never through a proxy (HTTP_PROXY and the like), as webhook deliveries.
        let http = reqwest::Client::builder()
            .user_agent("natter-send-hook")
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .build()
            .expect("an HTTP client with default TLS settings builds");
        Self {
            settings,
            http,
            latency: LatencyHistogram::default(),
            outcomes: Family::default(),
        }
    }

    /// Whether an unusable answer lets the send through (`SEND_HOOK_FAIL_OPEN`).
    pub fn fails_open(&self) -> bool {
        self.settings.fail_open
    }

    /// Asks the hook about `proposed`.
    pub async fn check(&self, proposed: &Proposed<'_>) -> Result<Verdict, HookFailed> {
        let started = Instant::now();
        let verdict = self.ask(proposed).await;
        self.latency.observe(started.elapsed());
        let outcome = match &verdict {
            Ok(Verdict::Allow) => "allow",
            Ok(Verdict::Reject { .. }) => "reject",
            Ok(Verdict::Modify { .. }) => "modify",
            Err(HookFailed::Timeout(_)) => "timeout",
            Err(HookFailed::Failed(_)) => "error",
        };
        self.outcomes.get_or_create(&OutcomeLabel { outcome }).inc();
        verdict
    }

    async fn ask(&self, proposed: &Proposed<'_>) -> Result<Verdict, HookFailed> {
        let body = serde_json::to_vec(proposed).expect("plain fields serialise");
        let mut request = self
            .http
            .post(&self.settings.url)
            .header("content-type", "application/json");
        if let Some(secret) = &self.settings.secret {
            let id = format!("msg_{}", Uuid::new_v4().simple());
            for (name, value) in signing::headers(&[secret], &id, unix_now(), &body) {
                request = request.header(name, value);
            }
        }
        let failed = |err: reqwest::Error| match err.is_timeout() {
            true => HookFailed::Timeout(self.settings.timeout),
            false => HookFailed::Failed(err.to_string()),
        };
        let response = request.body(body).send().await.map_err(failed)?;
        let status = response.status();
        if !status.is_success() {
            return Err(HookFailed::Failed(format!("answered {status}")));
        }
        let answer: Answer = response
            .json()
            .await
            .map_err(|err| match err.is_timeout() {
                true => HookFailed::Timeout(self.settings.timeout),
                false => HookFailed::Failed(format!("answer is not a verdict: {err}")),
            })?;
        Ok(match answer {
            Answer::Allow => Verdict::Allow,
            Answer::Reject { reason } => Verdict::Reject {
                reason: reason
                    .unwrap_or_else(|| "refused by moderation".into())
                    .chars()
                    .take(MAX_REASON_CHARS)
                    .collect(),
            },
            Answer::Modify { text } => Verdict::Modify { text },
        })
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
