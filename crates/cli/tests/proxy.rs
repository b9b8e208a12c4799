//! Browser access and scale-to-zero against real workspaces: the Debian base image running
//! `tests/fixtures/upstream.py` (HTTP, WebSocket, SSE), reached through Cove's proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use support::{poll, state, Engine, TestServer};

const UPSTREAM: &str = include_str!("../../../tests/fixtures/upstream.py");
const INSTALL: &str = include_str!("../../../tests/fixtures/in-workspace-install.sh");
const BIG: usize = 50 * 1024 * 1024;
const WAIT: Duration = Duration::from_secs(90);

/// A workspace on the base image with the test upstream on port 8080 (and in on-start).
fn workspace_with_upstream(server: &TestServer, name: &str) -> String {
    let image = Engine::base_image(&server.endpoint);
    server.ok(&["create", name, "--image", &image, "--cpus", "1", "--memory", "1g"]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(UPSTREAM);
    server.ok(&[
        "exec",
        name,
        "-e",
        &format!("UPSTREAM_B64={b64}"),
        "-e",
        "UPSTREAM_PORT=8080",
        "--",
        "sh",
        "-c",
        INSTALL,
    ]);
    format!("8080--{name}--admin.localhost:{}", server.port())
}

struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    token: String,
    addr: SocketAddr,
}

impl Http {
    fn new(server: &TestServer, host: &str) -> Self {
        Self::with(server, host, reqwest::Client::builder())
    }

    fn with(server: &TestServer, host: &str, builder: reqwest::ClientBuilder) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], server.port()).into();
        let client = builder.resolve(host.split(':').next().unwrap(), addr).build().unwrap();
        Self { rt: support::rt(), client, token: server.token(), addr }
    }

    fn get(&self, url: &str) -> (StatusCode, String) {
        self.rt.block_on(async {
            let resp = self.client.get(url).bearer_auth(&self.token).send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        })
    }
}

/// Byte i of `/big` is i % 256: a hash of what the upstream sends, computed here.
fn pattern_hash(len: usize) -> Vec<u8> {
    let block: Vec<u8> = (0..=255u8).collect();
    let mut h = Sha256::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(256);
        h.update(&block[..n]);
        left -= n;
    }
    h.finalize().to_vec()
}

#[test]
fn http_websocket_sse_and_http2_pass_through_a_real_workspace() {
    let server = TestServer::start();
    let host = workspace_with_upstream(&server, "web");
    let http = Http::new(&server, &host);
    let base = format!("http://{host}");

    let (status, body) = http.get(&format!("{base}/"));
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("cove test upstream"));

    // Headers as the app sees them.
    let (_, headers) = http.get(&format!("{base}/headers"));
    let headers: serde_json::Value = serde_json::from_str(&headers).unwrap();
    assert_eq!(headers["host"], host.as_str());
    assert_eq!(headers["x-forwarded-host"], host.as_str());
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert!(headers.get("authorization").is_none(), "Cove's token reached the app: {headers}");

    http.rt.block_on(async {
        // 50 MB down, hashed as it streams.
        let resp = http.client.get(format!("{base}/big?bytes={BIG}")).bearer_auth(&http.token).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let (mut n, mut h) = (0usize, Sha256::new());
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            n += chunk.len();
            h.update(&chunk);
        }
        assert_eq!((n, h.finalize().to_vec()), (BIG, pattern_hash(BIG)));

        // 50 MB up and back, streamed both ways.
        let chunks = futures::stream::iter((0..BIG / 65536).map(|i| {
            let block: Vec<u8> = (0..65536).map(|j| ((i * 65536 + j) % 256) as u8).collect();
            Ok::<_, std::io::Error>(block)
        }));
        let resp = http
            .client
            .post(format!("{base}/echo"))
            .bearer_auth(&http.token)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let (mut n, mut h) = (0usize, Sha256::new());
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            n += chunk.len();
            h.update(&chunk);
        }
        assert_eq!((n, h.finalize().to_vec()), (BIG, pattern_hash(BIG)));

        // Server-sent events arrive one by one, not when the stream ends.
        let resp = http.client.get(format!("{base}/sse")).bearer_auth(&http.token).send().await.unwrap();
        let started = Instant::now();
        let mut stream = resp.bytes_stream();
        let first = stream.next().await.unwrap().unwrap();
        let first_at = started.elapsed();
        assert!(String::from_utf8_lossy(&first).contains("data: "), "{first:?}");
        while stream.next().await.is_some() {}
        let end_at = started.elapsed();
        assert!(
            end_at - first_at >= Duration::from_millis(300),
            "events came together: first {first_at:?}, end {end_at:?}"
        );

        // A WebSocket echo, authenticated with the token on the upgrade request.
        let tcp = tokio::net::TcpStream::connect(http.addr).await.unwrap();
        let request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{host}/ws"))
                .unwrap();
        let mut request = request;
        request.headers_mut().insert("authorization", format!("Bearer {}", http.token).parse().unwrap());
        let (mut ws, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
        assert_eq!(response.status(), 101);
        for text in ["hello", "wörld ✓"] {
            ws.send(tokio_tungstenite::tungstenite::Message::text(text)).await.unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(reply.into_text().unwrap().as_str(), text);
        }
        ws.close(None).await.unwrap();
    });

    // HTTP/2 from the client (prior knowledge, as over plain TCP).
    let h2 = Http::with(&server, &host, reqwest::Client::builder().http2_prior_knowledge());
    h2.rt.block_on(async {
        let resp = h2.client.get(format!("{base}/")).bearer_auth(&h2.token).send().await.unwrap();
        assert_eq!((resp.status(), resp.version()), (StatusCode::OK, reqwest::Version::HTTP_2));
        assert!(resp.text().await.unwrap().contains("cove test upstream"));
    });

    // The metrics saw it, per workspace.
    let metrics = http.get(&format!("{}/metrics", server.url)).1;
    assert!(metrics.contains("cove_proxy_requests_total{workspace=\"admin/web\""), "{metrics}");
}

#[test]
fn an_idle_workspace_stops_and_the_next_request_wakes_it_with_its_files() {
    let server = TestServer::start();
    let host = workspace_with_upstream(&server, "nap");
    let http = Http::new(&server, &host);
    server.ok(&["exec", "nap", "--", "sh", "-c", "echo still here > ~/project/note.txt"]);
    server.ok(&["set", "nap", "--idle-timeout", "6s"]);

    // Requests keep it awake past its timeout... The loop ends on a request, so the check
    // below has most of the timeout to spare even though a connection reports at most one
    // request a second as activity.
    let until = Instant::now() + Duration::from_secs(9);
    loop {
        assert_eq!(http.get(&format!("http://{host}/")).0, StatusCode::OK);
        if Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    let show = server.ok(&["show", "nap"]);
    assert_eq!(state(&server.show("nap")), ("Running", "Running"), "stopped while in use:\n{show}");
    assert!(show.contains("(http)") && show.contains("unless used"), "`cove show` should say why it is awake:\n{show}");

    // ...and without them it stops.
    server.wait_for("nap", "the idle stop", WAIT, |ws| state(ws) == ("Stopped", "Stopped"));
    // The wake below counts its idle window from the wake, and the request is recorded as
    // activity only once admitted, after the app's port answers: a long timeout keeps a slow
    // start from being stopped again before then. Changing it does not start the workspace.
    server.ok(&["set", "nap", "--idle-timeout", "1h"]);

    // The next request wakes it, waits, and is served; the file is still there.
    let started = Instant::now();
    let (status, body) = http.get(&format!("http://{host}/file?name=project/note.txt"));
    assert_eq!((status, body.as_str()), (StatusCode::OK, "still here\n"), "after {:?}", started.elapsed());
    assert_eq!(state(&server.show("nap")), ("Running", "Running"));
    let metrics = http.get(&format!("{}/metrics", server.url)).1;
    assert!(metrics.contains("cove_idle_stops_total{workspace=\"admin/nap\"} 1"), "{metrics}");
    assert!(metrics.contains("cove_wakes_total{workspace=\"admin/nap\"} 1"), "{metrics}");
}

#[test]
fn a_browser_logs_in_sees_the_starting_page_then_the_app_and_its_websocket() {
    let server = TestServer::start();
    let host = workspace_with_upstream(&server, "site");
    server.ok(&["stop", "site"]);
    let summary = support::browser(&server, "wake.mjs", &[("APP_URL", format!("http://{host}/"))]);
    assert_eq!(summary["sawStartingPage"], true, "{summary}");
    assert_eq!(summary["wsResult"], "echo: ping", "{summary}");
    poll("the workspace to run", WAIT, || (state(&server.show("site")) == ("Running", "Running")).then_some(()));
}

#[test]
fn the_proxy_runs_alone_next_to_the_server_and_wakes_workspaces_too() {
    let server = TestServer::start();
    server.ok(&["create", "tiny", "--image", &server.image]);
    let on_start = "#!/bin/sh\nexec busybox httpd -f -p 8080 -h $HOME/www\n";
    server.ok(&[
        "exec",
        "tiny",
        "-e",
        &format!("ON_START={on_start}"),
        "--",
        "sh",
        "-c",
        "mkdir -p ~/www ~/.cove && echo standalone > ~/www/index.html && printf '%s' \"$ON_START\" > ~/.cove/on-start && chmod +x ~/.cove/on-start",
    ]);
    server.ok(&["restart", "tiny"]);

    let mut proxy = std::process::Command::new(support::COVE)
        .args(["proxy", "--listen", "127.0.0.1:0", "--engine", &server.endpoint, "--instance", &server.instance])
        .arg("--data-dir")
        .arg(&server.data_dir)
        .args(["--public-url", &server.url.replace("127.0.0.1", "localhost")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(proxy.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    let proxy_port: u16 = first.rsplit(':').next().unwrap().parse().unwrap();
    let host = format!("8080--tiny--admin.localhost:{proxy_port}");
    let addr: SocketAddr = ([127, 0, 0, 1], proxy_port).into();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve("8080--tiny--admin.localhost", addr)
        .build()
        .unwrap();
    let rt = support::rt();
    let get = |accept_html: bool, token: Option<&str>| {
        rt.block_on(async {
            let mut r = client.get(format!("http://{host}/"));
            if accept_html {
                r = r.header("accept", "text/html");
            }
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let resp = r.send().await.unwrap();
            let location = resp.headers().get("location").map(|l| l.to_str().unwrap().to_string());
            (resp.status(), location, resp.text().await.unwrap())
        })
    };
    let token = server.token();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let body = poll("the app behind the standalone proxy", WAIT, || {
            let (status, _, body) = get(false, Some(&token));
            (status == StatusCode::OK).then_some(body)
        });
        assert_eq!(body, "standalone\n");
        // Browsers without a cookie are sent to the server's dashboard to log in.
        let (status, location, _) = get(true, None);
        assert_eq!(status, StatusCode::FOUND);
        assert!(location
            .unwrap()
            .starts_with(&format!("{}/auth/app?target=", server.url.replace("127.0.0.1", "localhost"))));
        // A stopped workspace is woken through the standalone proxy; the server's reconciler starts it.
        server.ok(&["stop", "tiny"]);
        let (status, _, body) = get(false, Some(&token));
        assert_eq!((status, body.as_str()), (StatusCode::OK, "standalone\n"));
    }));
    let _ = proxy.kill();
    let _ = proxy.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
