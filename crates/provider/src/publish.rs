//! Publishing a change made in a workspace: committed and pushed by the
//! provider's git, where the credentials are, never in the workspace.

use crate::{Provider, ServiceError};
use berth_git::Publication;

impl Provider {
    /// Commits the publication's patch on its base and pushes it as its
    /// branch with the repository's credential; returns the commit pushed.
    pub async fn publish(&self, publication: &Publication<'_>) -> Result<String, ServiceError> {
        let scratch = self
            .home()
            .join("publish")
            .join(ulid::Ulid::generate().to_string().to_lowercase());
        self.git()
            .publish(publication, &scratch)
            .await
            .map_err(|source| ServiceError::Git {
                id: publication.repository.url.clone(),
                source,
            })
    }
}
