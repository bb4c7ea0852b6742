//! How berth connects to NATS. Authentication is NATS's own: a token, a
//! user and password, an nkey seed, or a credentials file (JWT and seed),
//! with TLS to a server whose CA is given and, optionally, a client
//! certificate. Every option is a flag (`--nats-*`) or a `BERTH_NATS_*`
//! environment variable; the server's URL is given by the command that
//! connects (`serve --nats URL`, `--server nats://...`).

use std::fmt;
use std::path::PathBuf;

pub use async_nats;

/// The connection options, as flags or environment variables. Secrets are
/// best given through the environment (or as files), where other users of
/// the machine cannot read them from the process list.
#[derive(Clone, Debug, clap::Args)]
pub struct NatsOptions {
    /// The subject prefix of berth's NATS API, served and used
    #[arg(
        id = "nats_prefix",
        long = "nats-prefix",
        env = "BERTH_NATS_PREFIX",
        global = true,
        value_name = "PREFIX",
        default_value = DEFAULT_PREFIX
    )]
    pub prefix: String,

    /// Authenticate to NATS with this token
    #[arg(
        id = "nats_token",
        long = "nats-token",
        env = "BERTH_NATS_TOKEN",
        hide_env_values = true,
        global = true,
        value_name = "TOKEN",
        conflicts_with_all = ["nats_user", "nats_nkey", "nats_creds"]
    )]
    pub token: Option<Secret>,

    /// Authenticate to NATS as this user (with --nats-password)
    #[arg(
        id = "nats_user",
        long = "nats-user",
        env = "BERTH_NATS_USER",
        global = true,
        value_name = "USER",
        requires = "nats_password",
        conflicts_with_all = ["nats_nkey", "nats_creds"]
    )]
    pub user: Option<String>,

    /// The NATS user's password
    #[arg(
        id = "nats_password",
        long = "nats-password",
        env = "BERTH_NATS_PASSWORD",
        hide_env_values = true,
        global = true,
        value_name = "PASSWORD",
        requires = "nats_user"
    )]
    pub password: Option<Secret>,

    /// Authenticate to NATS with the nkey seed held in this file
    #[arg(
        id = "nats_nkey",
        long = "nats-nkey",
        env = "BERTH_NATS_NKEY",
        global = true,
        value_name = "FILE",
        conflicts_with = "nats_creds"
    )]
    pub nkey: Option<PathBuf>,

    /// Authenticate to NATS with this credentials file (a user JWT and its seed)
    #[arg(
        id = "nats_creds",
        long = "nats-creds",
        env = "BERTH_NATS_CREDS",
        global = true,
        value_name = "FILE"
    )]
    pub creds: Option<PathBuf>,

    /// Require TLS, trusting the NATS server's certificate to this CA (PEM)
    #[arg(
        id = "nats_tls_ca",
        long = "nats-tls-ca",
        env = "BERTH_NATS_TLS_CA",
        global = true,
        value_name = "FILE"
    )]
    pub tls_ca: Option<PathBuf>,

    /// Require TLS, presenting this client certificate (PEM, with --nats-tls-key)
    #[arg(
        id = "nats_tls_cert",
        long = "nats-tls-cert",
        env = "BERTH_NATS_TLS_CERT",
        global = true,
        value_name = "FILE",
        requires = "nats_tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM)
    #[arg(
        id = "nats_tls_key",
        long = "nats-tls-key",
        env = "BERTH_NATS_TLS_KEY",
        global = true,
        value_name = "FILE",
        requires = "nats_tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

/// The subject prefix berth's NATS API lives under unless told otherwise.
pub const DEFAULT_PREFIX: &str = "berth.v1";

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            prefix: DEFAULT_PREFIX.into(),
            token: None,
            user: None,
            password: None,
            nkey: None,
            creds: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// A password, token or other secret: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid NATS URL {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the NATS nkey seed file {}: {source}", path.display())]
    Nkey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the NATS credentials file {}: {source}", path.display())]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL without any user or password it carried.
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

impl NatsOptions {
    /// Connects to the NATS server at `url` (`nats://HOST:PORT`, `tls://`,
    /// or `HOST:PORT`), naming the connection `name` (the server shows it to
    /// its operators). Fails at once when the server cannot be reached or
    /// refuses the credentials; once connected, the client reconnects by
    /// itself.
    pub async fn connect(&self, url: &str, name: &str) -> Result<async_nats::Client, Error> {
        let address: async_nats::ServerAddr = url.parse().map_err(|source| Error::Url {
            url: redacted(url),
            source,
        })?;
        let shown = redacted(url);
        self.client_options()
            .await?
            .name(name)
            .connect(address)
            .await
            .map_err(|source| Error::Connect { url: shown, source })
    }

    async fn client_options(&self) -> Result<async_nats::ConnectOptions, Error> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(token) = &self.token {
            options = options.token(token.expose().to_owned());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(path) = &self.nkey {
            let seed = tokio::fs::read_to_string(path)
                .await
                .map_err(|source| Error::Nkey {
                    path: path.clone(),
                    source,
                })?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(path) = &self.creds {
            options =
                options
                    .credentials_file(path)
                    .await
                    .map_err(|source| Error::Credentials {
                        path: path.clone(),
                        source,
                    })?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }
}

/// `url` without the user and password it may carry, for messages.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => url.to_owned(),
        },
        None => url
            .rsplit_once('@')
            .map_or(url, |(_, host)| host)
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_drops_user_and_password() {
        assert_eq!(
            redacted("nats://u:secret@127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(redacted("u:secret@host:1"), "host:1");
        assert_eq!(redacted("nats://host:1"), "nats://host:1");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let options = NatsOptions {
            token: Some(Secret::from("hunter2".to_owned())),
            ..NatsOptions::default()
        };
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
