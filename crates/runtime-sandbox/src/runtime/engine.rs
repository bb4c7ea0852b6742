//! Bases from a Docker or Podman engine's images (`image = "docker:NAME"`):
//! the image's filesystem is exported through the Engine API, from a
//! container created for it and never started, as a tar stream the layer
//! store unpacks once per image id (see [`super::base`]; the unpacking
//! takes the archive for hostile).

use super::base::ImageExporter;
use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptionsBuilder};
use futures::StreamExt;
use std::fmt::Display;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Where Docker's engine listens when `DOCKER_HOST` is not set.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// How long connecting to the engine may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// An [`ImageExporter`] over the Engine API of the engine at one host.
#[derive(Debug, Clone)]
pub struct EngineExporter {
    host: String,
}

impl EngineExporter {
    /// The engine at `host` (`unix:///path`, `tcp://host:port`, ...).
    pub fn new(host: impl Into<String>) -> EngineExporter {
        EngineExporter { host: host.into() }
    }

    /// The engine at `DOCKER_HOST`, else Docker's default socket.
    pub fn from_env() -> EngineExporter {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        EngineExporter::new(host)
    }

    /// Runs `work` against the engine on a runtime of its own: the layer
    /// store calls exporters on blocking threads.
    fn with_engine<T, F>(&self, work: impl FnOnce(Docker) -> F) -> Result<T, String>
    where
        F: Future<Output = Result<T, String>>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let connect = async {
                Docker::connect_with_host(&self.host)?
                    .negotiate_version()
                    .await
            };
            let docker = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| self.unreachable("no answer within 3 s"))?
                .map_err(|e| self.unreachable(e))?;
            work(docker).await
        })
    }

    fn unreachable(&self, reason: impl Display) -> String {
        format!(
            "cannot reach a container engine at {} ({reason}): start dockerd or a Podman \
             service (`podman system service`), or point DOCKER_HOST at one",
            self.host
        )
    }

    fn failed(&self, context: impl Display, err: EngineError) -> String {
        match err {
            EngineError::DockerResponseServerError { message, .. } => {
                format!("{context}: {}", message.trim())
            }
            other => format!("{context}: {other}"),
        }
    }
}

impl ImageExporter for EngineExporter {
    fn image_id(&self, image: &str) -> Result<String, String> {
        self.with_engine(|docker| async move {
            match docker.inspect_image(image).await {
                Ok(found) => found
                    .id
                    .ok_or_else(|| format!("the engine at {} gave no id", self.host)),
                Err(EngineError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Err(format!(
                    "no image `{image}` in the engine at {}: pull, build or import it first",
                    self.host
                )),
                Err(e) => Err(self.failed(format!("cannot inspect image `{image}`"), e)),
            }
        })
    }

    fn export(&self, image: &str, into: &Path) -> Result<(), String> {
        self.with_engine(|docker| async move {
            // Never started: the entrypoint only satisfies engines that
            // refuse a container without a command.
            let body = ContainerCreateBody {
                image: Some(image.to_string()),
                entrypoint: Some(vec!["/.berth-export".into()]),
                network_disabled: Some(true),
                ..Default::default()
            };
            let created = docker
                .create_container(None::<CreateContainerOptions>, body)
                .await
                .map_err(|e| self.failed(format!("cannot create a container of `{image}`"), e))?;
            let written = async {
                let mut file = std::fs::File::create(into)
                    .map_err(|e| format!("cannot create `{}`: {e}", into.display()))?;
                let mut stream = docker.export_container(&created.id);
                while let Some(chunk) = stream.next().await {
                    let chunk =
                        chunk.map_err(|e| self.failed(format!("cannot export `{image}`"), e))?;
                    file.write_all(&chunk)
                        .map_err(|e| format!("cannot write `{}`: {e}", into.display()))?;
                }
                Ok(())
            }
            .await;
            let options = RemoveContainerOptionsBuilder::new().force(true).build();
            let removed = docker
                .remove_container(&created.id, Some(options))
                .await
                .map_err(|e| self.failed(format!("cannot remove container `{}`", created.id), e));
            written.and(removed)
        })
    }
}
