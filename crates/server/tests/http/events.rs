//! The lists' changes pushed (`GET /v1/events`), and the cluster's nodes
//! of a server that serves no cluster.

use super::Api;
use futures::StreamExt as _;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

/// The next NDJSON line of `lines`.
async fn next_event(
    lines: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut Vec<u8>,
) -> Value {
    loop {
        if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            return serde_json::from_slice(&line).unwrap();
        }
        let chunk = lines.next().await.unwrap().unwrap();
        buffer.extend_from_slice(&chunk);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_events_stream_is_ready_then_tells_a_workspace_made() {
    let api = Api::start().await;
    let response = api
        .get("/v1/events")
        .header(header::ACCEPT, "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut lines = response.bytes_stream();
    let mut buffer = Vec::new();
    assert_eq!(
        next_event(&mut lines, &mut buffer).await,
        json!({"type": "ready"})
    );
    let (status, made) = api
        .json(
            api.post("/v1/workspaces")
                .json(&json!({ "spec": { "runtime": "fake" } })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(
        next_event(&mut lines, &mut buffer).await,
        json!({"type": "workspaces"})
    );
}

#[tokio::test]
async fn a_server_without_a_cluster_lists_no_nodes_and_says_so() {
    let api = Api::start().await;
    let (status, body) = api.json(api.get("/v1/nodes")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"clustered": false, "nodes": []}));
}
