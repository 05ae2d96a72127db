//! The `natter` binary: `serve` (default), `migrate`, `token --user NAME` and `health`;
//! `natter --help` and `natter serve --help` list them and every setting.
//!
//! Thin on purpose: it reads settings, starts logging and hands over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use natter::{
    app::Application,
    auth::{self, Authenticator},
    config::{Settings, SettingsArgs},
    domain::Username,
    store::Store,
    telemetry,
};

/// mimalloc instead of glibc's malloc: a node holds tens of thousands of small,
/// long-lived per-socket allocations made by several threads between short-lived ones,
/// and glibc's per-thread arenas leave much of that fragmented and resident (idle sockets
/// measured 12.1 KiB each with glibc, 7.7 with mimalloc; see BENCHMARKS.md). The
/// `system-allocator` feature leaves it out, for heap profilers that interpose malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A clustered real-time chat server: REST and WebSocket APIs, Postgres as the source of
/// truth, NATS between nodes. Every setting is a flag or its environment variable.
#[derive(Parser)]
#[command(name = "natter", version = env!("NATTER_VERSION"))]
struct Cli {
    /// What to do; `serve` when none is given.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST and WebSocket APIs until SIGTERM, then drain.
    Serve(SettingsArgs),
    /// Apply the database migrations and exit.
    Migrate(SettingsArgs),
    /// Print a token for a user, creating the user (without a password) if needed: for
    /// local testing.
    Token {
        /// The user's username.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Exit 0 if the node on LISTEN_ADDR answers /healthz: the container health check,
    /// for images with no shell or curl.
    Health,
}

/// `natter` alone: `serve`, with its settings from the environment.
#[derive(Parser)]
struct Environment {
    #[command(flatten)]
    settings: SettingsArgs,
}

/// What to run once the settings are read.
enum Run {
    Serve,
    Migrate,
    Token { user: String },
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = Cli::parse()
        .command
        .unwrap_or_else(|| Command::Serve(Environment::parse_from(["natter"]).settings));
    let (args, run) = match command {
        Command::Health => return health().await,
        Command::Serve(args) => (args, Run::Serve),
        Command::Migrate(args) => (args, Run::Migrate),
        Command::Token { user, settings } => (settings, Run::Token { user }),
    };
    let settings = match Settings::from_args(&args) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("natter: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format, &settings.node_id, &settings.log_filter);
    let result = match run {
        Run::Serve => serve(settings).await,
        Run::Migrate => migrate(settings).await,
        Run::Token { user } => token(settings, &user).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut message = err.to_string();
            let mut source = err.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("natter: {message}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

async fn serve(settings: Settings) -> Result<(), BoxError> {
    let tracer = telemetry::otlp::install(&settings)?;
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    if let Some(tracer) = tracer {
        // Hands the last spans to the exporter; its queue is posted while we wait.
        let flushed = tokio::task::spawn_blocking(move || tracer.shutdown());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), flushed).await;
    }
    Ok(())
}

async fn migrate(settings: Settings) -> Result<(), BoxError> {
    let store = Store::connect(
        &settings.database_url,
        1,
        settings.database_ca_file.as_deref(),
    )?;
    store.migrate().await?;
    println!("migrations applied");
    Ok(())
}

/// Prints a token for the user `name`, creating the user (without a password) if needed.
async fn token(settings: Settings, name: &str) -> Result<(), BoxError> {
    let username = Username::parse(name)?;
    let store = Store::connect(
        &settings.database_url,
        1,
        settings.database_ca_file.as_deref(),
    )?;
    store.migrate().await?;
    let user = store.get_or_create_user(&username).await?;
    let signing_key = auth::local_signing_key(&settings.auth, &store).await?;
    let issued = Authenticator::new(&settings.auth, &signing_key, store).issue(user.id);
    println!("{}", issued.token);
    Ok(())
}

/// Exits 0 if the local node answers `/healthz`: the container health check, for images
/// that have no shell or curl.
async fn health() -> ExitCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = std::env::var("LISTEN_ADDR")
        .ok()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map_or(8080, |a| a.port());
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response.starts_with(b"HTTP/1.1 200"))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), check).await {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler succeeds");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn version_names_the_package_version_and_the_commit() {
        let printed = match Cli::try_parse_from(["natter", "--version"]) {
            Err(err) if err.kind() == clap::error::ErrorKind::DisplayVersion => err.to_string(),
            _ => panic!("--version prints the version"),
        };
        let expected = format!("natter {} (", env!("CARGO_PKG_VERSION"));
        let commit = printed
            .trim_end()
            .strip_prefix(&expected)
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{printed:?} is not `natter VERSION (COMMIT)`"));
        let commit_ish = commit.len() >= 4 && commit.bytes().all(|b| b.is_ascii_hexdigit());
        assert!(commit_ish || commit == "unknown", "{commit:?}");
    }
}
