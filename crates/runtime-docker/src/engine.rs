//! Connecting to the Engine with the API version both sides speak, learnt
//! from the `Api-Version` header of its `/_ping`, as Docker's own client
//! does, instead of from `/version`: Podman takes about 300 ms to answer
//! that, and berth connects once per command-line call. The ping is a
//! hand-made request over hyper because bollard's hides the headers.

use bollard::errors::Error as EngineError;
use bollard::{API_DEFAULT_VERSION, ClientVersion, Docker};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::io;

/// Seconds bollard waits for any one request (its own default).
const REQUEST_TIMEOUT: u64 = 120;

/// A client of the Engine at `host` (`unix:///path`, `tcp://` or
/// `http://host:port`; other schemes, and TLS as `DOCKER_TLS_VERIFY` asks
/// for it, negotiate through `/version`).
pub async fn connect(host: &str) -> Result<Docker, EngineError> {
    let tls = std::env::var_os("DOCKER_TLS_VERIFY").is_some();
    if let Some(path) = host.strip_prefix("unix://") {
        let stream = tokio::net::UnixStream::connect(path).await?;
        let version = ping_version(stream).await?;
        Docker::connect_with_unix(host, REQUEST_TIMEOUT, &version)
    } else if let Some(address) = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
        .filter(|_| !tls)
    {
        let stream = tokio::net::TcpStream::connect(address.trim_end_matches('/')).await?;
        let version = ping_version(stream).await?;
        Docker::connect_with_http(host, REQUEST_TIMEOUT, &version)
    } else {
        Docker::connect_with_host(host)?.negotiate_version().await
    }
}

/// The newest API version both the Engine answering on `stream` and
/// bollard speak.
async fn ping_version<S>(stream: S) -> Result<ClientVersion, EngineError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get("/_ping")
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(io::Error::other)?;
    let response = sender.send_request(request).await;
    driver.abort();
    let response = response.map_err(io::Error::other)?;
    let header = response
        .headers()
        .get("api-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let version = parse_version(header).ok_or_else(|| {
        io::Error::other(format!(
            "its ping answered {} without an API version (Api-Version: {header:?})",
            response.status()
        ))
    })?;
    Ok(if version < *API_DEFAULT_VERSION {
        version
    } else {
        *API_DEFAULT_VERSION
    })
}

/// `1.41` as a version; `None` for anything else.
fn parse_version(text: &str) -> Option<ClientVersion> {
    let (major, minor) = text.trim().split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_version_is_two_numbers() {
        assert_eq!(
            parse_version("1.41"),
            Some(ClientVersion {
                major_version: 1,
                minor_version: 41
            })
        );
        for bad in ["", "1", "1.x", "1.41.2", "v1.41"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    /// An engine answering its ping with `header` on a socket of the test.
    async fn engine_answering(header: &'static str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut request).await;
            let answer = format!("HTTP/1.1 200 OK\r\n{header}Content-Length: 2\r\n\r\nOK");
            tokio::io::AsyncWriteExt::write_all(&mut stream, answer.as_bytes())
                .await
                .unwrap();
        });
        (dir, format!("unix://{}", path.display()))
    }

    #[tokio::test]
    async fn the_version_is_the_older_of_the_engines_and_the_clients() {
        let (_dir, host) = engine_answering("Api-Version: 1.41\r\n").await;
        let docker = connect(&host).await.unwrap();
        assert_eq!(docker.client_version().to_string(), "1.41");

        let (_dir, host) = engine_answering("Api-Version: 9.99\r\n").await;
        let docker = connect(&host).await.unwrap();
        assert_eq!(docker.client_version(), *API_DEFAULT_VERSION);
    }

    #[tokio::test]
    async fn a_ping_without_a_version_is_refused_by_name() {
        let (_dir, host) = engine_answering("").await;
        let err = connect(&host).await.unwrap_err().to_string();
        assert!(err.contains("without an API version"), "{err}");
    }
}
