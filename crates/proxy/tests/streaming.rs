//! Bodies are streamed, never buffered: 50 MB each way in bounded memory, and server-sent
//! events arrive one by one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

const LARGE: u64 = 50 * 1024 * 1024;

/// A field of /proc/self/status, in KiB.
fn memory_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Reads a response chunk by chunk: its length and checksum.
async fn drain(mut response: reqwest::Response) -> (u64, u64) {
    let mut checksum = Checksum::default();
    let mut len = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        len += chunk.len() as u64;
        checksum.update(&chunk);
    }
    (len, checksum.0)
}

// Client, proxy and app share this process, so its peak memory tells whether anyone buffered
// a whole body: the test runs alone in its binary, apart from the small SSE test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_in_bounded_memory() {
    let (_upstream, _gate, proxy) = setup().await;
    let client = proxy.http1();
    let expected = pattern_checksum(LARGE);
    let baseline = memory_kib("VmRSS:");

    let download = client.get(proxy.app_url(&format!("/big?bytes={LARGE}"))).send().await.unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(drain(download).await, (LARGE, expected), "download");

    let upload = client
        .post(proxy.app_url("/echo"))
        .body(reqwest::Body::wrap_stream(pattern_stream(LARGE)))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::OK);
    assert_eq!(drain(upload).await, (LARGE, expected), "upload echoed");

    let grown = memory_kib("VmHWM:").saturating_sub(baseline);
    assert!(grown < 32 * 1024, "peak memory grew by {grown} KiB while streaming {LARGE} bytes");

    let w = format!("workspace=\"{LABEL}\"");
    let text = proxy.await_metric(&format!("cove_proxy_requests_total{{{w},code=\"200\"}} 2")).await;
    assert_eq!(metric(&text, &format!("cove_proxy_bytes_total{{{w},direction=\"in\"}}")), Some(LARGE as f64));
    assert_eq!(metric(&text, &format!("cove_proxy_bytes_total{{{w},direction=\"out\"}}")), Some(2.0 * LARGE as f64));
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let (upstream, _gate, proxy) = setup().await;
    for client in [proxy.http1(), proxy.http2()] {
        let mut response = client.get(proxy.app_url("/sse")).send().await.unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut received = String::new();
        for n in 0..3 {
            let event = format!("data: event {n}\n\n");
            while !received.contains(&event) {
                let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
                    .await
                    .unwrap_or_else(|_| panic!("event {n} did not arrive; got {received:?}"))
                    .unwrap()
                    .unwrap_or_else(|| panic!("the stream ended before event {n}; got {received:?}"));
                received.push_str(std::str::from_utf8(&chunk).unwrap());
            }
            // The app sends the next event only now, so a proxy that held events back until
            // the end of the stream would never have delivered this one.
            if n < 2 {
                upstream.sse_permits.add_permits(1);
            }
        }
        // (An HTTP/2 stream may end with an empty DATA frame.)
        while let Some(rest) = response.chunk().await.unwrap() {
            assert!(rest.is_empty(), "{rest:?} after the last event");
        }
        assert_eq!(received, "data: event 0\n\ndata: event 1\n\ndata: event 2\n\n");
    }
}
