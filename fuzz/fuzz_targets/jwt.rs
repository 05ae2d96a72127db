//! Bearer tokens (`Authenticator::verify`): whatever a client sends as a token, Natter's
//! own or one claiming an external HS256 issuer, is refused without a panic, because no
//! input the fuzzer makes carries a valid signature.
#![no_main]

use std::{sync::OnceLock, time::Duration};

use libfuzzer_sys::fuzz_target;
use natter::{
    auth::Authenticator,
    config::{AuthSettings, IssuerConfig},
    store::Store,
};

struct Verifier {
    runtime: tokio::runtime::Runtime,
    auth: Authenticator,
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The pool connects lazily; a refused token never reaches the database.
        let store = runtime.block_on(async {
            Store::connect("postgres://natter@127.0.0.1:1/natter", 1, None).unwrap()
        });
        let settings = AuthSettings {
            jwt_secret: None,
            token_ttl: Duration::from_secs(3600),
            issuers: vec![IssuerConfig {
                issuer: "https://project.supabase.co/auth/v1".into(),
                audience: "authenticated".into(),
                jwks_url: None,
                hs256_secret: Some("supabase-secret-supabase-secret".into()),
            }],
        };
        // Any key will do: the fuzzer only ever holds forged signatures.
        let key = [0x5a_u8; 32];
        let auth = runtime.block_on(async { Authenticator::new(&settings, &key, store) });
        Verifier { runtime, auth }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let verifier = verifier();
    let verdict = verifier.runtime.block_on(verifier.auth.verify(token));
    assert!(
        verdict.is_err(),
        "an unsigned input was accepted: {token:?}"
    );
});
