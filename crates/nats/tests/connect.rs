//! Connecting to a real nats-server with each of NATS's own ways to
//! authenticate, given as berth's flags.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_nats::{Error, NatsOptions};
use berth_testkit::NatsServer;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    nats: NatsOptions,
}

fn options(flags: &[&str]) -> NatsOptions {
    Cli::try_parse_from(std::iter::once("berth").chain(flags.iter().copied()))
        .unwrap_or_else(|e| panic!("{flags:?}: {e}"))
        .nats
}

/// Connects, then proves the connection works with a request to a
/// responder of its own.
async fn round_trip(client: &async_nats::Client) {
    use futures::StreamExt as _;
    let mut requests = client.subscribe("probe").await.unwrap();
    let responder = client.clone();
    tokio::spawn(async move {
        if let Some(request) = requests.next().await {
            let reply = request.reply.unwrap();
            responder.publish(reply, "pong".into()).await.unwrap();
        }
    });
    let answer = client.request("probe", "ping".into()).await.unwrap();
    assert_eq!(&answer.payload[..], b"pong");
}

fn refused(result: Result<async_nats::Client, Error>) -> String {
    match result {
        Ok(_) => panic!("the server admitted a client it should refuse"),
        Err(error @ Error::Connect { .. }) => error.to_string(),
        Err(other) => panic!("refused for another reason: {other}"),
    }
}

#[tokio::test]
async fn a_token_server_admits_its_token_and_refuses_another() {
    let server = NatsServer::start_with_config(r#"authorization { token: "s3cret" }"#);
    let client = options(&["--nats-token", "s3cret"])
        .connect(&server.url(), "test")
        .await
        .unwrap();
    round_trip(&client).await;

    let message = refused(
        options(&["--nats-token", "wrong"])
            .connect(&server.url(), "test")
            .await,
    );
    assert!(message.contains(&server.url()), "{message}");
    assert!(message.contains("authorization violation"), "{message}");
    refused(options(&[]).connect(&server.url(), "test").await);
}

#[tokio::test]
async fn a_user_and_password_are_checked() {
    let server = NatsServer::start_with_config(
        r#"authorization { users = [ { user: "ada", password: "pa55" } ] }"#,
    );
    let client = options(&["--nats-user", "ada", "--nats-password", "pa55"])
        .connect(&server.url(), "test")
        .await
        .unwrap();
    round_trip(&client).await;
    refused(
        options(&["--nats-user", "ada", "--nats-password", "nope"])
            .connect(&server.url(), "test")
            .await,
    );
}

#[tokio::test]
async fn an_nkey_seed_file_signs_the_servers_challenge() {
    let pair = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with_config(&format!(
        r#"authorization {{ users = [ {{ nkey: "{}" }} ] }}"#,
        pair.public_key()
    ));
    let dir = berth_testkit::temp_dir();
    let seed = dir.path().join("user.nk");
    std::fs::write(&seed, format!("{}\n", pair.seed().unwrap())).unwrap();
    let client = options(&["--nats-nkey", seed.to_str().unwrap()])
        .connect(&server.url(), "test")
        .await
        .unwrap();
    round_trip(&client).await;

    let stranger = dir.path().join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    refused(
        options(&["--nats-nkey", stranger.to_str().unwrap()])
            .connect(&server.url(), "test")
            .await,
    );
}

#[tokio::test]
async fn a_missing_seed_or_credentials_file_is_named() {
    let server = NatsServer::start();
    for flag in ["--nats-nkey", "--nats-creds"] {
        let error = options(&[flag, "/nonexistent/berth.nk"])
            .connect(&server.url(), "test")
            .await
            .err()
            .unwrap();
        let message = error.to_string();
        assert!(message.contains("/nonexistent/berth.nk"), "{message}");
        assert!(
            matches!(error, Error::Nkey { .. } | Error::Credentials { .. }),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_password_in_a_refused_url_never_appears_in_the_error() {
    let server = NatsServer::start_with_config(
        r#"authorization { users = [ { user: "ada", password: "pa55" } ] }"#,
    );
    let url = format!("nats://ada:leaked-secret@127.0.0.1:{}", server.port());
    let message = refused(options(&[]).connect(&url, "test").await);
    assert!(!message.contains("leaked-secret"), "{message}");
    assert!(message.contains(&server.url()), "{message}");
}

#[tokio::test]
async fn a_server_that_is_gone_fails_the_connection_naming_its_url() {
    let mut server = NatsServer::start();
    let url = server.url();
    server.kill();
    let message = refused(options(&[]).connect(&url, "test").await);
    assert!(message.contains(&url), "{message}");
}

#[test]
fn two_ways_to_authenticate_at_once_are_refused() {
    for flags in [
        &[
            "--nats-token",
            "t",
            "--nats-user",
            "u",
            "--nats-password",
            "p",
        ][..],
        &["--nats-token", "t", "--nats-creds", "c"],
        &["--nats-nkey", "n", "--nats-creds", "c"],
        &["--nats-user", "u"],
        &["--nats-tls-cert", "c"],
    ] {
        let parsed = Cli::try_parse_from(std::iter::once("berth").chain(flags.iter().copied()));
        assert!(parsed.is_err(), "{flags:?} was accepted");
    }
}

/// A command's own `--token` (the HTTP server's) and the NATS options
/// side by side: each keeps its own value.
#[test]
fn the_nats_token_never_collides_with_a_commands_own_token() {
    #[derive(Parser)]
    struct Serve {
        #[arg(long)]
        token: Option<String>,
        #[command(flatten)]
        nats: NatsOptions,
    }
    let serve =
        Serve::try_parse_from(["serve", "--token", "http", "--nats-token", "nats"]).unwrap();
    assert_eq!(serve.token.as_deref(), Some("http"));
    assert_eq!(serve.nats.token.unwrap().expose(), "nats");
}
