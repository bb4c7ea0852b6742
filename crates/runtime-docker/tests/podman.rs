//! The docker runtime's suite against a Podman service's Docker-compatible
//! API (`BERTH_PODMAN_HOST`, or the socket `scripts/prepare` starts it on).
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod suite;
mod support;

/// The engine every test of this binary talks to.
const ENGINE: support::Engine = support::Engine::Podman;
