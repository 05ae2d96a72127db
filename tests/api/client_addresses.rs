//! Budgets per client address (SPEC §18): the client's address comes from
//! `X-Forwarded-For` only when the peer is a trusted proxy; logins (10 a minute),
//! registrations (5 a minute) and requests without a credential are counted per
//! address, an IPv6 /64 as one; and the sign-in throttle counts failures per username
//! *and* address, so a stranger's failures never lock the owner out. The header's
//! parsing is unit-tested in `client_address`.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, reply, spawn_app_with};

/// A node behind a "balancer" at 127.0.0.1 (the tests' own address), with `adjust`'s
/// limits.
async fn behind_a_balancer(adjust: impl FnOnce(&mut natter::config::Limits)) -> TestApp {
    spawn_app_with(|settings| {
        settings.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        adjust(&mut settings.limits);
    })
    .await
}

/// A request the balancer forwarded from `client`.
async fn call_from(
    node: &TestApp,
    client: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = node
        .http()
        .request(method, node.url(path))
        .header("x-forwarded-for", client);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    reply(request.send().await.expect("request reaches the node")).await
}

async fn login_from(node: &TestApp, client: &str, username: &str, password: &str) -> Reply {
    let body = json!({"username": username, "password": password});
    call_from(
        node,
        client,
        Method::POST,
        "/v1/auth/login",
        None,
        Some(body),
    )
    .await
}

/// `(status, error code or "")`.
fn outcome(reply: &Reply) -> (u16, String) {
    let code = match reply.status.is_success() {
        true => String::new(),
        false => reply.error_code().to_string(),
    };
    (reply.status.as_u16(), code)
}

#[tokio::test]
async fn a_strangers_failed_logins_never_lock_the_owner_out_from_another_address() {
    let node = behind_a_balancer(|limits| limits.logins_per_minute_per_address = 10).await;
    node.register("alice").await;
    let stranger = "198.51.100.66";
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(outcome(
            &login_from(&node, stranger, "alice", "guess").await,
        ));
    }
    // The stranger's own address is throttled for alice...
    assert!(
        answers.contains(&(429, "too_many_attempts".into())),
        "{answers:?}"
    );
    let from_stranger = login_from(&node, stranger, "alice", "correct horse").await;
    assert_eq!(outcome(&from_stranger), (429, "too_many_attempts".into()));
    // ...while alice, from her own address, signs in at once.
    let from_owner = login_from(&node, "203.0.113.5", "alice", "correct horse").await;
    from_owner.assert_status(200);
}

#[tokio::test]
async fn each_address_may_try_ten_logins_a_minute_and_an_ipv6_slash_64_is_one_address() {
    let node = behind_a_balancer(|limits| limits.logins_per_minute_per_address = 10).await;
    // Made-up names, so no username's throttle is involved: only the address's budget.
    for i in 0..10 {
        let answer = login_from(&node, "198.51.100.1", &format!("nobody{i}"), "guess").await;
        assert_eq!(outcome(&answer), (401, "invalid_credentials".into()), "{i}");
    }
    let refused = login_from(&node, "198.51.100.1", "nobody10", "guess").await;
    assert_eq!(outcome(&refused), (429, "rate_limited".into()));
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&retry_after), "{retry_after}");
    // Another address has its own budget.
    let elsewhere = login_from(&node, "198.51.100.2", "nobody", "guess").await;
    assert_eq!(outcome(&elsewhere), (401, "invalid_credentials".into()));

    // Ten logins spread over one /64 spend one budget...
    for i in 0..10 {
        let client = format!("2001:db8:1:2::{:x}", i + 1);
        let answer = login_from(&node, &client, &format!("v6nobody{i}"), "guess").await;
        assert_eq!(
            outcome(&answer),
            (401, "invalid_credentials".into()),
            "{client}"
        );
    }
    let same_network = login_from(&node, "2001:db8:1:2:ffff::9", "v6nobody", "guess").await;
    assert_eq!(outcome(&same_network), (429, "rate_limited".into()));
    // ...and the next /64 is somebody else.
    let next_network = login_from(&node, "2001:db8:1:3::1", "v6nobody", "guess").await;
    assert_eq!(outcome(&next_network), (401, "invalid_credentials".into()));
}

#[tokio::test]
async fn each_address_may_register_five_accounts_a_minute() {
    let node = behind_a_balancer(|limits| limits.registrations_per_minute_per_address = 5).await;
    let register = |client: &'static str, username: String| {
        let body = json!({"username": username, "password": "correct horse"});
        let node = &node;
        async move {
            call_from(
                node,
                client,
                Method::POST,
                "/v1/auth/register",
                None,
                Some(body),
            )
            .await
        }
    };
    for i in 0..5 {
        register("198.51.100.1", format!("user{i}"))
            .await
            .assert_status(201);
    }
    let refused = register("198.51.100.1", "user5".into()).await;
    assert_eq!(outcome(&refused), (429, "rate_limited".into()));
    assert!(refused.headers.contains_key("retry-after"));
    // The refused registration created nothing: the name is still free elsewhere.
    register("198.51.100.2", "user5".into())
        .await
        .assert_status(201);
}

#[tokio::test]
async fn requests_without_a_credential_are_limited_per_address_and_probes_never_are() {
    let node = behind_a_balancer(|limits| limits.unauthenticated_per_second_per_address = 10).await;
    let client = "198.51.100.1";
    let mut refused = 0;
    for _ in 0..40 {
        let answer = call_from(&node, client, Method::GET, "/v1/rooms", None, None).await;
        match outcome(&answer) {
            (401, code) if code == "unauthorized" => {}
            (429, code) if code == "rate_limited" => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // 40 requests in well under a second against 10 a second: most are refused.
    assert!(refused >= 20, "{refused} refused");
    // The balancer's health checks from that address still pass.
    for path in ["/healthz", "/readyz"] {
        let probe = call_from(&node, client, Method::GET, path, None, None).await;
        assert_eq!(probe.status.as_u16(), 200, "{path}");
    }
    // Another address is not affected.
    let elsewhere = call_from(&node, "198.51.100.2", Method::GET, "/v1/rooms", None, None).await;
    assert_eq!(outcome(&elsewhere), (401, "unauthorized".into()));

    // A made-up credential is no way around the budget: each refusal spends it, so the
    // next request without one from that address waits.
    let fresh = "198.51.100.3";
    for _ in 0..30 {
        let answer = call_from(
            &node,
            fresh,
            Method::GET,
            "/v1/rooms",
            Some("made-up"),
            None,
        )
        .await;
        assert_eq!(answer.status.as_u16(), 401);
    }
    let after = call_from(&node, fresh, Method::GET, "/v1/rooms", None, None).await;
    assert_eq!(outcome(&after), (429, "rate_limited".into()));
}

#[tokio::test]
async fn a_forwarded_for_header_from_a_peer_that_is_not_a_trusted_proxy_changes_nothing() {
    // No TRUSTED_PROXIES: the tests' 127.0.0.1 is the client, whatever it claims.
    let node = spawn_app_with(|settings| {
        settings.limits.logins_per_minute_per_address = 10;
    })
    .await;
    for i in 0..10 {
        let claimed = format!("198.51.100.{}", i + 1);
        let answer = login_from(&node, &claimed, &format!("nobody{i}"), "guess").await;
        assert_eq!(outcome(&answer), (401, "invalid_credentials".into()), "{i}");
    }
    let refused = login_from(&node, "203.0.113.99", "nobody", "guess").await;
    assert_eq!(outcome(&refused), (429, "rate_limited".into()));
}
