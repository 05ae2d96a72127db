//! Every token attack of SPEC §2 gets a 401; external issuers (HS256 secret and JWKS with
//! RS256/ES256) are accepted when, and only when, everything checks out.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use natter::config::IssuerConfig;
use poem::{
    EndpointExt, Route, Server, get, handler,
    listener::{Acceptor, Listener, TcpListener},
    web::Data,
};
use serde_json::{Value, json};

use crate::helpers::{JWT_SECRET, TestApp, spawn_app, spawn_app_with};

const RSA_KEY: &[u8] = include_bytes!("../fixtures/rsa_private.pem");
const EC_KEY: &[u8] = include_bytes!("../fixtures/ec_private.pem");
const JWKS: &str = include_str!("../fixtures/jwks.json");
const SUPABASE_SECRET: &str = "supabase-style-shared-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn local(claims: Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        &claims,
    )
}

async fn status_with(app: &TestApp, token: &str) -> u16 {
    let reply = app.get("/v1/users/me", token).await;
    if reply.status != 200 {
        assert!(reply.body["error"]["code"].is_string(), "{}", reply.body);
    }
    reply.status.as_u16()
}

#[tokio::test]
async fn every_attack_on_natter_tokens_gets_401() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let sub = alice.id.to_string();
    let good = json!({"sub": sub, "iss": "natter", "exp": now() + 600});
    assert_eq!(status_with(&app, &local(good.clone())).await, 200);

    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    let forged = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"not-the-secret-not-the-secret"),
        &good,
    );
    let rsa_signed = sign(
        Algorithm::RS256,
        None,
        &EncodingKey::from_rsa_pem(RSA_KEY).unwrap(),
        &good,
    );
    let tampered = tamper(&local(good.clone()));
    let attacks: Vec<(&str, String)> = vec![
        ("malformed", "not-a-jwt".into()),
        ("garbage segments", "a.b.c".into()),
        ("alg none", unsigned),
        ("wrong secret", forged),
        ("tampered payload", tampered),
        ("RS256 key not ours", rsa_signed),
        (
            "expired",
            local(json!({"sub": sub, "iss": "natter", "exp": now() - 3600})),
        ),
        (
            "not yet valid",
            local(json!({"sub": sub, "iss": "natter", "exp": now() + 7200, "nbf": now() + 3600})),
        ),
        ("no exp", local(json!({"sub": sub, "iss": "natter"}))),
        (
            "untrusted issuer",
            local(json!({"sub": sub, "iss": "https://evil.example", "exp": now() + 600})),
        ),
        (
            "missing iss",
            local(json!({"sub": sub, "exp": now() + 600})),
        ),
        (
            "sub not a user id",
            local(json!({"sub": "alice", "iss": "natter", "exp": now() + 600})),
        ),
    ];
    for (name, token) in attacks {
        assert_eq!(status_with(&app, &token).await, 401, "attack: {name}");
    }

    // No token, or not a bearer token, is a 401 too.
    let reply = app
        .call(reqwest::Method::GET, "/v1/users/me", None, None)
        .await;
    reply.assert_status(401);
    assert_eq!(reply.error_code(), "unauthorized");
    let basic = app
        .http()
        .get(app.url("/v1/users/me"))
        .header("Authorization", "Basic YWxpY2U6cGFzc3dvcmQ=")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
}

#[tokio::test]
async fn an_hs256_issuer_is_trusted_for_its_audience_only() {
    let app = spawn_app_with(|s| {
        s.auth.issuers.push(IssuerConfig {
            issuer: "https://project.supabase.co/auth/v1".into(),
            audience: "authenticated".into(),
            jwks_url: None,
            hs256_secret: Some(SUPABASE_SECRET.into()),
        })
    })
    .await;
    let key = EncodingKey::from_secret(SUPABASE_SECRET.as_bytes());
    let claims = |aud: &str, exp: u64| {
        json!({"sub": "supabase-user-1", "iss": "https://project.supabase.co/auth/v1",
               "aud": aud, "exp": exp, "email": "Jane.Doe@example.com"})
    };
    let good = sign(
        Algorithm::HS256,
        None,
        &key,
        &claims("authenticated", now() + 600),
    );
    let me = app.get("/v1/users/me", &good).await;
    me.assert_status(200);
    assert!(
        me.body["username"]
            .as_str()
            .unwrap()
            .starts_with("jane.doe-")
    );
    // The same subject maps to the same user every time.
    let again = app.get("/v1/users/me", &good).await;
    assert_eq!(again.body["id"], me.body["id"]);

    let wrong_audience = sign(Algorithm::HS256, None, &key, &claims("anon", now() + 600));
    let expired = sign(
        Algorithm::HS256,
        None,
        &key,
        &claims("authenticated", now() - 600),
    );
    let natter_secret = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        &claims("authenticated", now() + 600),
    );
    for (name, token) in [
        ("wrong audience", wrong_audience),
        ("expired", expired),
        ("signed with another issuer's secret", natter_secret),
    ] {
        assert_eq!(status_with(&app, &token).await, 401, "{name}");
    }
}

/// A JWKS endpoint the test controls: what it serves and how often it was fetched.
struct JwksServer {
    url: String,
    document: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    /// How long each answer takes: a slow identity provider.
    delay: Arc<Mutex<Duration>>,
}

#[derive(Clone)]
struct JwksState {
    document: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    delay: Arc<Mutex<Duration>>,
}

#[handler]
async fn serve_jwks(Data(state): Data<&JwksState>) -> poem::web::Json<Value> {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let delay = *state.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    poem::web::Json(state.document.lock().unwrap().clone())
}

async fn jwks_server(document: Value) -> JwksServer {
    let state = JwksState {
        document: Arc::new(Mutex::new(document)),
        fetches: Arc::new(AtomicUsize::new(0)),
        delay: Arc::new(Mutex::new(Duration::ZERO)),
    };
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
    let routes = Route::new()
        .at("/.well-known/jwks.json", get(serve_jwks))
        .data(state.clone());
    tokio::spawn(Server::new_with_acceptor(acceptor).run(routes));
    JwksServer {
        url: format!("http://{addr}/.well-known/jwks.json"),
        document: state.document,
        fetches: state.fetches,
        delay: state.delay,
    }
}

const ISSUER: &str = "https://idp.example.com/";
const AUDIENCE: &str = "natter-api";

async fn app_trusting(jwks: &JwksServer) -> TestApp {
    let url = jwks.url.clone();
    spawn_app_with(move |s| {
        s.auth.issuers.push(IssuerConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            jwks_url: Some(url),
            hs256_secret: None,
        })
    })
    .await
}

fn idp_claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600,
           "preferred_username": "Kim", "name": "Kim K."})
}

#[tokio::test]
async fn jwks_tokens_signed_with_rs256_and_es256_are_accepted_and_keys_are_cached() {
    let jwks = jwks_server(serde_json::from_str(JWKS).unwrap()).await;
    let app = app_trusting(&jwks).await;
    let rsa = EncodingKey::from_rsa_pem(RSA_KEY).unwrap();
    let ec = EncodingKey::from_ec_pem(EC_KEY).unwrap();

    let rs_token = sign(Algorithm::RS256, Some("rsa-1"), &rsa, &idp_claims("user-1"));
    let me = app.get("/v1/users/me", &rs_token).await;
    me.assert_status(200);
    assert_eq!(me.body["display_name"], "Kim K.");
    let es_token = sign(Algorithm::ES256, Some("ec-1"), &ec, &idp_claims("user-2"));
    app.get("/v1/users/me", &es_token).await.assert_status(200);
    for _ in 0..5 {
        app.get("/v1/users/me", &rs_token).await.assert_status(200);
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "keys are cached");
}

/// `token` with its payload swapped for one naming another subject, signature kept.
fn tamper(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("someone-else");
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}

#[tokio::test]
async fn every_attack_on_jwks_issuer_tokens_gets_401() {
    let jwks = jwks_server(serde_json::from_str(JWKS).unwrap()).await;
    let app = app_trusting(&jwks).await;
    let rsa = EncodingKey::from_rsa_pem(RSA_KEY).unwrap();
    let ec = EncodingKey::from_ec_pem(EC_KEY).unwrap();
    let claims = idp_claims("user-1");
    app.get(
        "/v1/users/me",
        &sign(Algorithm::RS256, Some("rsa-1"), &rsa, &claims),
    )
    .await
    .assert_status(200);

    // Key confusion: HS256 "signed" with the RSA public key's bytes as the secret.
    let public_jwk: Value = serde_json::from_str::<Value>(JWKS).unwrap()["keys"][0].clone();
    let confused = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(public_jwk["n"].as_str().unwrap().as_bytes()),
        &claims,
    );
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut expired = claims.clone();
    expired["exp"] = json!(now() - 600);
    let mut early = claims.clone();
    early["nbf"] = json!(now() + 3600);
    let attacks = vec![
        ("HS256 against an RSA key", confused),
        (
            "ES256 header on an RSA key",
            sign(Algorithm::ES256, Some("rsa-1"), &ec, &claims),
        ),
        (
            "RS256 header on an EC key",
            sign(Algorithm::RS256, Some("ec-1"), &rsa, &claims),
        ),
        (
            "tampered payload",
            tamper(&sign(Algorithm::RS256, Some("rsa-1"), &rsa, &claims)),
        ),
        (
            "wrong audience",
            sign(Algorithm::RS256, Some("rsa-1"), &rsa, &wrong_aud),
        ),
        (
            "expired",
            sign(Algorithm::RS256, Some("rsa-1"), &rsa, &expired),
        ),
        (
            "not yet valid",
            sign(Algorithm::RS256, Some("rsa-1"), &rsa, &early),
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, Some("nope"), &rsa, &claims),
        ),
    ];
    for (name, token) in attacks {
        assert_eq!(status_with(&app, &token).await, 401, "attack: {name}");
    }
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_so_rotated_keys_work() {
    let mut document: Value = serde_json::from_str(JWKS).unwrap();
    let ec_jwk = document["keys"][1].clone();
    document["keys"].as_array_mut().unwrap().truncate(1);
    let jwks = jwks_server(document).await;
    let app = app_trusting(&jwks).await;
    let rsa = EncodingKey::from_rsa_pem(RSA_KEY).unwrap();
    let ec = EncodingKey::from_ec_pem(EC_KEY).unwrap();
    app.get(
        "/v1/users/me",
        &sign(Algorithm::RS256, Some("rsa-1"), &rsa, &idp_claims("u")),
    )
    .await
    .assert_status(200);
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);

    // The issuer rotates in a new key; a token signed with it triggers a refetch
    // (after the minimum interval that stops kid floods from hammering the issuer).
    jwks.document.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(ec_jwk);
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let es_token = sign(Algorithm::ES256, Some("ec-1"), &ec, &idp_claims("u"));
    app.get("/v1/users/me", &es_token).await.assert_status(200);
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);

    // A flood of made-up kids right after costs no further fetches.
    for i in 0..10 {
        let token = sign(
            Algorithm::RS256,
            Some(&format!("made-up-{i}")),
            &rsa,
            &idp_claims("u"),
        );
        assert_eq!(status_with(&app, &token).await, 401);
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_hs256_issuer_and_a_jwks_issuer_never_accept_each_others_tokens() {
    let jwks = jwks_server(serde_json::from_str(JWKS).unwrap()).await;
    let url = jwks.url.clone();
    let supabase = "https://project.supabase.co/auth/v1";
    let app = spawn_app_with(move |s| {
        s.auth.issuers.push(IssuerConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            jwks_url: Some(url),
            hs256_secret: None,
        });
        s.auth.issuers.push(IssuerConfig {
            issuer: supabase.into(),
            audience: "authenticated".into(),
            jwks_url: None,
            hs256_secret: Some(SUPABASE_SECRET.into()),
        });
    })
    .await;
    let shared = EncodingKey::from_secret(SUPABASE_SECRET.as_bytes());
    let natter = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let rsa = EncodingKey::from_rsa_pem(RSA_KEY).unwrap();
    let jwks_claims = idp_claims("user-1");
    let hs_claims = json!({"sub": "supabase-user-1", "iss": supabase, "aud": "authenticated",
                           "exp": now() + 600});

    // Each issuer's own tokens work.
    let jwks_token = sign(Algorithm::RS256, Some("rsa-1"), &rsa, &jwks_claims);
    assert_eq!(status_with(&app, &jwks_token).await, 200);
    let hs_token = sign(Algorithm::HS256, None, &shared, &hs_claims);
    assert_eq!(status_with(&app, &hs_token).await, 200);

    let mut hs_with_jwks_audience = hs_claims.clone();
    hs_with_jwks_audience["aud"] = json!(AUDIENCE);
    let mut no_issuer = hs_claims.clone();
    no_issuer.as_object_mut().unwrap().remove("iss");
    let attacks = [
        (
            "the JWKS issuer's claims, HS256 with the other issuer's secret",
            sign(Algorithm::HS256, Some("rsa-1"), &shared, &jwks_claims),
        ),
        (
            "the JWKS issuer's claims, HS256 with Natter's secret",
            sign(Algorithm::HS256, None, &natter, &jwks_claims),
        ),
        (
            "the HS256 issuer's claims, RS256 with a key from the JWKS",
            sign(Algorithm::RS256, Some("rsa-1"), &rsa, &hs_claims),
        ),
        (
            "the HS256 issuer's secret on a token naming no issuer",
            sign(Algorithm::HS256, None, &shared, &no_issuer),
        ),
        (
            "the HS256 issuer's token for the JWKS issuer's audience",
            sign(Algorithm::HS256, None, &shared, &hs_with_jwks_audience),
        ),
    ];
    for (name, token) in attacks {
        assert_eq!(status_with(&app, &token).await, 401, "{name}");
    }
}

#[tokio::test]
async fn an_external_user_whose_username_was_registered_first_still_gets_an_account_with_a_clean_name()
 {
    let issuer = "https://project.supabase.co/auth/v1";
    let app = spawn_app_with(|s| {
        s.auth.issuers.push(IssuerConfig {
            issuer: issuer.into(),
            audience: "authenticated".into(),
            jwks_url: None,
            hs256_secret: Some(SUPABASE_SECRET.into()),
        })
    })
    .await;
    // The name provisioning derives is predictable from the subject: someone takes it.
    let id = natter::auth::external_user_id(issuer, "victim-1");
    let predicted = format!("victim-{}", &id.simple().to_string()[..7]);
    app.register(&predicted).await;
    let key = EncodingKey::from_secret(SUPABASE_SECRET.as_bytes());
    let token = sign(
        Algorithm::HS256,
        None,
        &key,
        &json!({"sub": "victim-1", "iss": issuer, "aud": "authenticated", "exp": now() + 600,
                "preferred_username": "victim", "name": "Vic\u{0007}tim\u{202e}"}),
    );
    let me = app.get("/v1/users/me", &token).await;
    me.assert_status(200);
    assert_eq!(me.body["id"], id.to_string());
    let username = me.body["username"].as_str().unwrap();
    assert_eq!(username, format!("victim-{}", id.simple()));
    // A provider's name that breaks the display-name rules is not used.
    assert_eq!(me.body["display_name"], "victim");
    // And the account works: a room of one's own.
    let room = app
        .post(
            "/v1/rooms",
            &token,
            json!({"name": "mine", "kind": "public"}),
        )
        .await;
    room.assert_status(201);
}

#[tokio::test]
async fn a_slow_key_fetch_holds_up_only_the_tokens_that_need_the_new_keys() {
    let jwks = jwks_server(serde_json::from_str(JWKS).unwrap()).await;
    let app = app_trusting(&jwks).await;
    let rsa = EncodingKey::from_rsa_pem(RSA_KEY).unwrap();
    let known = sign(Algorithm::RS256, Some("rsa-1"), &rsa, &idp_claims("user-1"));
    app.get("/v1/users/me", &known).await.assert_status(200);
    // The provider turns slow; a token with a key id nobody has makes the node refetch
    // (once the refetch interval has passed).
    *jwks.delay.lock().unwrap() = Duration::from_secs(4);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let unknown = sign(
        Algorithm::RS256,
        Some("rotated"),
        &rsa,
        &idp_claims("user-2"),
    );
    let slow = {
        let (http, url) = (app.http().clone(), app.url("/v1/users/me"));
        tokio::spawn(async move { http.get(url).bearer_auth(unknown).send().await })
    };
    while jwks.fetches.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // While that fetch is in flight, a token whose key is cached is checked at once.
    app.get("/v1/users/me", &known).await.assert_status(200);
    assert!(!slow.is_finished(), "the cached key waited for the fetch");
    assert_eq!(slow.await.unwrap().unwrap().status(), 401);
}
