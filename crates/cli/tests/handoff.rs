//! Hand-off webhooks against a real server and Podman: a receiver on loopback that refuses
//! the first delivery, signatures checked with the owner's key, stopped and ready workspaces.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use support::TestServer;

struct Delivery {
    signature: String,
    body: Vec<u8>,
}

/// An HTTP receiver that answers 500 to the first `fail_first` requests, 204 after.
fn receiver(fail_first: usize) -> (String, mpsc::Receiver<(u16, Delivery)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut length, mut signature) = (0usize, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("x-cove-signature:") {
                    signature = line.split_once(':').unwrap().1.trim().to_string();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let status = if n < fail_first { 500 } else { 204 };
            let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tx.send((status, Delivery { signature, body }));
        }
    });
    (url, rx)
}

fn handoff_key(server: &TestServer) -> Vec<u8> {
    let rt = support::rt();
    let key: Value = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/api/v1/me/handoff-key", server.url))
            .bearer_auth(server.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    hex::decode(key["key"].as_str().unwrap()).unwrap()
}

fn verify(key: &[u8], delivery: &Delivery) {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(&delivery.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(delivery.signature, expected, "the signature does not match the body under the owner's key");
}

#[test]
fn a_handoff_is_delivered_signed_once_ready_and_retried_when_refused() {
    let server = TestServer::start();
    let key = handoff_key(&server);
    let (url, deliveries) = receiver(1);
    server.ok(&["create", "review", "--notify", &url, "--message", "PR #7 is ready for you"]);

    // First attempt refused, second accepted, both signed, carrying the same hand-off.
    let (status, first) = deliveries.recv_timeout(Duration::from_secs(60)).expect("no delivery");
    assert_eq!(status, 500);
    verify(&key, &first);
    let (status, second) = deliveries.recv_timeout(Duration::from_secs(60)).expect("no retry");
    assert_eq!(status, 204);
    verify(&key, &second);
    let body: Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(body["workspace"], "review");
    assert_eq!(body["state"], "ready");
    assert_eq!(body["message"], "PR #7 is ready for you");
    assert_eq!(body["url"], format!("http://code--review--admin.localhost:{}/", server.port()));
    assert_eq!(body["ssh"], "cove ssh review");
    let ws = server.wait_for("review", "the hand-off to be recorded as delivered", Duration::from_secs(30), |w| {
        w["handoff"]["state"] == "delivered"
    });
    assert_eq!(ws["handoff"]["attempts"], 2, "{ws}");
    assert!(deliveries.recv_timeout(Duration::from_secs(3)).is_err(), "delivered more than once");

    // A body changed in transit fails verification.
    let mut forged = Delivery { signature: second.signature.clone(), body: second.body.clone() };
    forged.body.extend_from_slice(b" ");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(&forged.body);
    assert_ne!(format!("sha256={}", hex::encode(mac.finalize().into_bytes())), forged.signature);
}

#[test]
fn a_handoff_of_a_workspace_left_stopped_says_so_and_bad_urls_are_refused() {
    let server = TestServer::start();
    let key = handoff_key(&server);
    let (url, deliveries) = receiver(0);
    server.ok(&["create", "later", "--stopped", "--notify", &url]);
    let (_, delivery) = deliveries.recv_timeout(Duration::from_secs(60)).expect("no delivery");
    verify(&key, &delivery);
    let body: Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(body["state"], "stopped");
    assert_eq!(support::state(&server.show("later")), ("Stopped", "Stopped"), "the hand-off must not start it");

    let err = server.fails(&["create", "bad", "--notify", "ftp://example.com/x"]);
    assert!(err.contains("handoff.notify must be an http:// or https:// URL"), "{err}");
    assert!(!server.cove(&["show", "bad"]).status.success(), "a refused create left a workspace");
}
