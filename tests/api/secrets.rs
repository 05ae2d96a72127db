//! The secrets a cluster runs on, tried by someone without them (SPEC §10): with no
//! `JWT_SECRET` the cluster signs with a key it generates and shares through Postgres,
//! so no secret the repository ever shipped forges a token; NATS admits only Natter,
//! signed in from its URL or a password file; and NATS over TLS is verified with
//! `NATS_CA_FILE`. Each test starts nodes configured for its case; the NATS ones start
//! a nats-server of their own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{settings, spawn_app_with, spawn_node};

/// A token for `user` signed with `secret`, as someone who knows it would make.
fn forge(user: uuid::Uuid, secret: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "iss": "natter", "iat": now, "exp": now + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn without_jwt_secret_the_cluster_signs_with_a_generated_key_and_no_shipped_secret_forges_a_token()
 {
    let first = spawn_app_with(|settings| settings.auth.jwt_secret = None).await;
    let mut second = settings(&first.database_url);
    second.auth.jwt_secret = None;
    let second = spawn_node(second).await;
    let alice = first.register("alice").await;
    // One key for the cluster: a token from one node works on the other.
    second
        .get("/v1/users/me", &alice.token)
        .await
        .assert_status(200);
    let key = first
        .db()
        .await
        .query_one("SELECT secret FROM signing_keys WHERE name = 'local'", &[])
        .await
        .unwrap()
        .get::<_, Vec<u8>>(0);
    assert_eq!(key.len(), 32);
    for secret in natter::config::SHIPPED_SECRETS {
        let reply = first.get("/v1/users/me", &forge(alice.id, secret)).await;
        assert_eq!(
            (reply.status.as_u16(), reply.error_code()),
            (401, "unauthorized"),
            "{secret}"
        );
    }
}

/// A nats-server of the test's own with `config` (and JetStream), on a free port: the
/// process, its port and its directory.
async fn nats_with(config: &str) -> (tokio::process::Child, u16, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("natter-nats-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("nats.conf");
    std::fs::write(&file, config).unwrap();
    let port = crate::helpers::free_port();
    let nats = crate::helpers::own_nats(port, &dir, Some(&file));
    crate::helpers::wait_for_port(port).await;
    (nats, port, dir)
}

#[tokio::test]
async fn a_nats_with_authorization_refuses_strangers_and_natter_signs_in_from_its_url_or_a_password_file()
 {
    // A NATS of our own that only knows the user natter, with a password nobody ships.
    let password = uuid::Uuid::new_v4().simple().to_string();
    let (_nats, port, dir) = nats_with(&format!(
        "authorization {{ users = [ {{ user: natter, password: \"{password}\" }} ] }}\n"
    ))
    .await;
    // No credentials, or wrong ones: refused (no reading rooms, no injecting events).
    for url in [
        format!("nats://127.0.0.1:{port}"),
        format!("nats://natter:guess@127.0.0.1:{port}"),
    ] {
        let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2));
        assert!(options.connect(url.as_str()).await.is_err(), "{url}");
    }
    // One node with the password in NATS_URL, one with it in NATS_PASSWORD_FILE.
    let first = spawn_app_with(|s| {
        s.nats_url = format!("nats://natter:{password}@127.0.0.1:{port}");
    })
    .await;
    let password_file = dir.join("password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let mut second = settings(&first.database_url);
    second.nats_url = format!("nats://natter@127.0.0.1:{port}");
    second.nats_auth.password_file = Some(password_file);
    let second = spawn_node(second).await;
    for node in [&first, &second] {
        let ready = node.call(Method::GET, "/readyz", None, None).await;
        assert_eq!(ready.body["nats"], true);
    }
    // A message crosses between them through the authenticated NATS.
    let alice = first.register("alice").await;
    let room = first.create_room(&alice, "r", "public").await;
    let mut socket = crate::helpers::WsClient::connect(second.addr, "/v1/ws", &alice.token).await;
    socket.subscribe(room, None).await;
    first
        .send(&alice, room, "through the closed backbone")
        .await;
    assert_eq!(
        socket.recv_type("message").await["message"]["text"],
        "through the closed backbone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn natter_reaches_nats_over_tls_verified_with_nats_ca_file() {
    // The harness's CA and its certificate for 127.0.0.1 (made for Postgres over TLS).
    let ca = std::path::PathBuf::from(std::env::var("NATTER_TEST_PG_CA").unwrap());
    let certs = ca.parent().unwrap();
    let password = uuid::Uuid::new_v4().simple().to_string();
    let (_nats, port, dir) = nats_with(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\n\
         authorization {{ users = [ {{ user: natter, password: \"{password}\" }} ] }}\n",
        certs.join("server.crt").display(),
        certs.join("server.key").display(),
    ))
    .await;
    let url = format!("tls://natter:{password}@127.0.0.1:{port}");
    // Without the CA the server's certificate is not trusted: no connection.
    let untrusted = async_nats::ConnectOptions::new()
        .user_and_password("natter".into(), password.clone())
        .connection_timeout(Duration::from_secs(2))
        .connect(format!("tls://127.0.0.1:{port}"))
        .await;
    assert!(untrusted.is_err());
    let first = spawn_app_with(|s| {
        s.nats_url = url.clone();
        s.nats_auth.ca_file = Some(ca.clone());
    })
    .await;
    let mut second = settings(&first.database_url);
    second.nats_url = url.clone();
    second.nats_auth.ca_file = Some(ca.clone());
    let second = spawn_node(second).await;
    let alice = first.register("alice").await;
    let room = first.create_room(&alice, "r", "public").await;
    let mut socket = crate::helpers::WsClient::connect(second.addr, "/v1/ws", &alice.token).await;
    socket.subscribe(room, None).await;
    first.send(&alice, room, "over tls").await;
    assert_eq!(
        socket.recv_type("message").await["message"]["text"],
        "over tls"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
