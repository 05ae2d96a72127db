//! Password hashing with argon2id (OWASP's recommended parameters, the crate's default).
//!
//! Each hash takes ~19 MiB and tens of milliseconds of CPU, so hashing runs on a small
//! pool of dedicated threads ([`HASHER_THREADS`]), never on the async workers that serve
//! sockets, and never on an unbounded set of blocking threads: every thread that ever
//! hashes keeps its 19 MiB in its allocator arena, so a burst of registrations spread
//! over many threads would leave the node gigabytes larger (measured: 2.4 GiB after 200
//! registrations). Work beyond the queue's capacity is refused rather than queued.

use std::sync::{
    Mutex, OnceLock,
    mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
};

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use tokio::sync::oneshot;

use crate::domain::Password;

/// Threads that hash; each holds one argon2 working area at a time.
const HASHER_THREADS: usize = 2;
/// Hashes waiting for a thread before new ones are refused.
const HASHER_QUEUE: usize = 256;

type Job = Box<dyn FnOnce() + Send>;

/// The pool is busy; the caller answers 503.
#[derive(Debug, thiserror::Error)]
#[error("too many password checks in progress")]
pub struct Busy;

fn hasher() -> &'static SyncSender<Job> {
    static QUEUE: OnceLock<SyncSender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = sync_channel::<Job>(HASHER_QUEUE);
        let rx: &'static Mutex<Receiver<Job>> = Box::leak(Box::new(Mutex::new(rx)));
        for i in 0..HASHER_THREADS {
            std::thread::Builder::new()
                .name(format!("natter-hasher-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().expect("not poisoned").recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("spawning a hasher thread");
        }
        tx
    })
}

/// Runs `work` on the hasher pool.
async fn on_hasher<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Busy> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(work());
    });
    match hasher().try_send(job) {
        Ok(()) => rx.await.map_err(|_| Busy),
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Busy),
    }
}

/// Hashes `password` into a PHC string (`$argon2id$…`).
pub async fn hash(password: Password) -> Result<String, Busy> {
    on_hasher(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
            .expect("argon2 with default parameters hashes any password")
    })
    .await
}

/// Checks `password` against `stored`. With no stored hash (an unknown user, or one who
/// has no password) it still spends the time of a real check, so response timing does
/// not reveal which usernames exist.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, Busy> {
    on_hasher(move || {
        let argon2 = Argon2::default();
        match stored.as_deref().map(PasswordHash::new) {
            Some(Ok(hash)) => argon2.verify_password(password.as_bytes(), &hash).is_ok(),
            _ => {
                let salt = SaltString::generate(&mut OsRng);
                let _ = argon2.hash_password(password.as_bytes(), &salt);
                false
            }
        }
    })
    .await
}
