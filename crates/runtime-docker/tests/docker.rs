//! The docker runtime's suite against dockerd (`DOCKER_HOST`, or its
//! default socket).
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

mod suite;
mod support;

/// The engine every test of this binary talks to.
const ENGINE: support::Engine = support::Engine::Docker;
