//! SSH into real workspaces (the Debian base image on Podman) with the real OpenSSH client,
//! through `cove ssh --stdio` as its `ProxyCommand` and the server's WebSocket tunnel:
//! shells on a PTY, exit codes, scp both ways, `ssh -L`, `cove port-forward`, `cove ports`,
//! a host key that survives stop and start, and SSH input as activity for the idle stop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::{poll, state, Engine, TestServer};

const WAIT: Duration = Duration::from_secs(90);
const BIG: usize = 20 * 1024 * 1024;

/// A server with one workspace on the base image and an ssh config from `cove config-ssh`.
struct Ssh {
    server: TestServer,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Ssh {
    fn new(name: &str) -> Self {
        let server = TestServer::start();
        let image = Engine::base_image(&server.endpoint);
        server.ok(&["create", name, "--image", &image, "--cpus", "1", "--memory", "1g"]);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ssh_config");
        std::fs::write(&config, "Host unrelated\n    User someone\n").unwrap();
        server.ok(&["config-ssh", "--ssh-config", config.to_str().unwrap()]);
        let first = std::fs::read_to_string(&config).unwrap();
        server.ok(&["config-ssh", "--ssh-config", config.to_str().unwrap()]);
        let again = std::fs::read_to_string(&config).unwrap();
        assert_eq!(first, again, "config-ssh must be idempotent");
        assert!(first.starts_with("Host unrelated\n") && first.contains(&format!("Host cove.{name}\n")), "{first}");
        assert!(first.contains("ProxyCommand") && first.contains(&format!("ssh --stdio {name}")), "{first}");
        Ssh { server, dir, config }
    }

    fn ssh_command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.arg("-F").arg(&self.config);
        c.args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]);
        // The proxy command finds its token in the CLI's config, as after `cove login`.
        c.env("COVE_CONFIG_DIR", &self.server.config_dir).env_remove("COVE_TOKEN").env_remove("COVE_URL");
        c
    }

    /// `ssh HOST ARGS...` with no input; its output.
    fn ssh(&self, host: &str, args: &[&str]) -> Output {
        self.ssh_command("ssh").arg(host).args(args).stdin(Stdio::null()).output().unwrap()
    }

    fn ssh_ok(&self, host: &str, script: &str) -> String {
        let out = self.ssh(host, &[script]);
        assert!(
            out.status.success(),
            "ssh {host} {script:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn known_hosts(&self) -> String {
        std::fs::read_to_string(self.server.config_dir.join("known_hosts")).unwrap_or_default()
    }
}

/// Reads a child's stdout on a thread, so tests can wait for text with a deadline.
struct Lines {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Lines {
    fn new(mut out: impl Read + Send + 'static) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Lines { rx, seen: Vec::new() }
    }

    fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while !String::from_utf8_lossy(&self.seen).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.seen.extend(chunk),
                Err(_) => panic!("no {needle:?} within {timeout:?} in {:?}", String::from_utf8_lossy(&self.seen)),
            }
        }
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    poll("the process to exit", timeout, || child.try_wait().unwrap())
}

fn sha256_file(path: &Path) -> String {
    hex(&Sha256::digest(std::fs::read(path).unwrap()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes that do not compress (so the tunnel really carries 20 MB) without a RNG crate.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(port: u16) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn openssh_shells_commands_scp_forwarding_and_a_stable_host_key() {
    let t = Ssh::new("box");
    let host = "cove.box";

    // A command, as the workspace user, with its exit code.
    assert_eq!(t.ssh_ok(host, "whoami; pwd"), "cove\n/home/cove\n");
    assert_eq!(t.ssh(host, &["exit 3"]).status.code(), Some(3));
    let out = t.ssh(host, &["echo to-stderr >&2; exit 0"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
    let known = t.known_hosts();
    assert!(known.contains("cove.box ssh-ed25519 "), "the first use records the key: {known:?}");

    // An interactive shell on a PTY.
    let mut child = t
        .ssh_command("ssh")
        .args(["-tt", host])
        .env("LC_TEST_VALUE", "passed")
        .args(["-o", "SendEnv=LC_TEST_VALUE"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"tty; test -t 0 && echo is-a-tty-$((2+3)); echo \"env-$LC_TEST_VALUE\"; echo done-$((6*7))\n")
        .unwrap();
    let seen = lines.wait_for("done-42", WAIT);
    assert!(seen.contains("/dev/pts/") && seen.contains("is-a-tty-5"), "{seen}");
    assert!(seen.contains("env-passed"), "LC_* is passed on: {seen}");
    stdin.write_all(b"exit 4\n").unwrap();
    assert_eq!(wait_exit(&mut child, WAIT).code(), Some(4));

    // scp (SFTP underneath) of 20 MB both ways.
    let up = t.dir.path().join("up.bin");
    std::fs::write(&up, noise(BIG)).unwrap();
    let scp = |from: &str, to: &str| {
        let out = t.ssh_command("scp").args(["-q", from, to]).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "scp {from} {to}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let started = Instant::now();
    scp(up.to_str().unwrap(), &format!("{host}:big.bin"));
    eprintln!("scp up of {} MiB: {:?}", BIG >> 20, started.elapsed());
    let remote = t.ssh_ok(host, "sha256sum big.bin");
    assert_eq!(remote.split_whitespace().next(), Some(sha256_file(&up).as_str()), "uploaded copy differs");
    let down = t.dir.path().join("down.bin");
    let started = Instant::now();
    scp(&format!("{host}:big.bin"), down.to_str().unwrap());
    eprintln!("scp down of {} MiB: {:?}", BIG >> 20, started.elapsed());
    assert_eq!(sha256_file(&down), sha256_file(&up), "downloaded copy differs");

    // git over SSH, as a desktop's git would use it: clone a repository in the workspace
    // from the host, push a commit back.
    t.ssh_ok(
        host,
        "git init -q --bare --initial-branch=main ~/origin.git && git init -q ~/seed && cd ~/seed && echo one > f && git add f && \
         git -c user.email=t@e -c user.name=t commit -qm one && git push -q ~/origin.git HEAD:refs/heads/main",
    );
    let git = |args: &[&str], cwd: &Path| {
        let ssh = format!("ssh -F {} -o BatchMode=yes -o LogLevel=ERROR", t.config.display());
        let out = Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_SSH_COMMAND", ssh)
            .env("COVE_CONFIG_DIR", &t.server.config_dir)
            .env_remove("COVE_TOKEN")
            .env_remove("COVE_URL")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let clone = t.dir.path().join("clone");
    git(&["clone", "-q", &format!("{host}:origin.git"), clone.to_str().unwrap()], t.dir.path());
    assert_eq!(std::fs::read_to_string(clone.join("f")).unwrap(), "one\n");
    std::fs::write(clone.join("g"), "two\n").unwrap();
    git(&["add", "g"], &clone);
    git(&["-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "two"], &clone);
    git(&["push", "-q", "origin", "HEAD:main"], &clone);
    let log = t.ssh_ok(host, "git --git-dir=origin.git log --format=%s main");
    assert_eq!(log, "two\none\n");

    // A server inside the workspace, seen by `cove ports`, reached with `ssh -L`.
    t.ssh_ok(
        host,
        "mkdir -p ~/www && echo hello-from-box > ~/www/index.html && \
         (setsid python3 -m http.server 8765 --bind 127.0.0.1 --directory ~/www >/dev/null 2>&1 &)",
    );
    let listed = poll("cove ports to list 8765", WAIT, || {
        let json: serde_json::Value = serde_json::from_str(&t.server.ok(&["ports", "box", "--json"])).ok()?;
        json.as_array()?.iter().find(|p| p["port"] == 8765).cloned()
    });
    assert_eq!(listed["addresses"], serde_json::json!(["127.0.0.1"]), "{listed}");
    let table = t.server.ok(&["ports", "box"]);
    assert!(table.contains("8765") && table.contains("127.0.0.1"), "{table}");

    // A port found free can be taken again before ssh binds it: ssh then exits
    // (ExitOnForwardFailure), and the forward is tried once more on another port.
    let forward_8765 = || {
        let local = free_port();
        let forward = t
            .ssh_command("ssh")
            .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L", &format!("{local}:127.0.0.1:8765"), host])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut forward = Killed(forward);
        poll("ssh -L to forward (or exit)", WAIT, || {
            if let Some(body) = http_get(local).filter(|b| b.contains("hello-from-box")) {
                return Some(Ok(body));
            }
            forward.0.try_wait().unwrap().map(Err)
        })
    };
    let body = forward_8765().or_else(|_| forward_8765()).unwrap_or_else(|status| panic!("ssh -L exited: {status}"));
    assert!(body.starts_with("HTTP/1.0 200"), "{body}");

    // `cove port-forward` over the same tunnel.
    let mut forward = Command::new(support::COVE)
        .args(["port-forward", "box", "0:8765"])
        .env("COVE_CONFIG_DIR", &t.server.config_dir)
        .env("COVE_URL", &t.server.url)
        .env_remove("COVE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let first = BufReader::new(forward.stdout.take().unwrap()).lines().next().unwrap().unwrap();
    let _forward = Killed(forward);
    let bound: std::net::SocketAddr =
        first.strip_prefix("forwarding ").and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
    for _ in 0..3 {
        let body = http_get(bound.port()).unwrap_or_default();
        assert!(body.contains("hello-from-box"), "through cove port-forward: {body:?}");
    }
    assert!(t.server.fails(&["port-forward", "box", "8000:0"]).contains("LOCAL:REMOTE"));

    // Stopped, then woken by `cove ssh` itself: same host key, so strict checking passes.
    t.server.ok(&["stop", "box"]);
    assert_eq!(state(&t.server.show("box")), ("Stopped", "Stopped"));
    let out = t.server.cove(&["ssh", "box", "--", "exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(state(&t.server.show("box")), ("Running", "Running"));
    let strict = t.ssh(host, &["-o", "StrictHostKeyChecking=yes", "cat big.bin | sha256sum"]);
    assert!(strict.status.success(), "host key changed after a restart: {}", String::from_utf8_lossy(&strict.stderr));
    assert!(String::from_utf8_lossy(&strict.stdout).starts_with(&sha256_file(&up)), "files survive the restart");
    assert_eq!(t.known_hosts(), known, "no new key was recorded");

    // Someone else's token opens nothing.
    let out = Command::new(support::COVE)
        .args(["ssh", "--stdio", "box"])
        .env("COVE_URL", &t.server.url)
        .env("COVE_TOKEN", "cove_not-a-token")
        .env("COVE_CONFIG_DIR", t.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("error:"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn typing_over_ssh_postpones_the_idle_stop_and_an_idle_session_does_not() {
    let t = Ssh::new("nap");
    let child = t
        .ssh_command("ssh")
        .args(["-tt", "cove.nap"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let mut lines = Lines::new(child.0.stdout.take().unwrap());
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(b"echo ready-$((1+1))\n").unwrap();
    lines.wait_for("ready-2", WAIT);
    // The short timeout is set once the session is up (the change restarts the idle
    // window), so however slow the connection, the window opens with the typing.
    t.server.ok(&["set", "nap", "--idle-timeout", "6s"]);

    // Input every second, for well past the timeout (a person typing, not a wait).
    let typing_until = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    while Instant::now() < typing_until {
        n += 1;
        stdin.write_all(format!("echo tick-{n}\n").as_bytes()).unwrap();
        lines.wait_for(&format!("tick-{n}"), WAIT);
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(state(&t.server.show("nap")), ("Running", "Running"), "stopped while typing");

    // The session stays open but idle: the workspace stops anyway.
    t.server.wait_for("nap", "the idle stop", WAIT, |ws| state(ws) == ("Stopped", "Stopped"));
}

#[test]
fn bad_ssh_and_tunnel_requests_get_clear_errors() {
    let server = TestServer::start();
    server.ok(&["create", "tiny", "--image", &server.image]);
    assert!(server.fails(&["ssh", "Not_A_Name"]).contains("invalid workspace name"));
    assert!(server.fails(&["ssh", "--stdio", "nope"]).contains("workspace nope not found"));
    assert!(server.fails(&["ssh", "--stdio", "tiny", "--", "ls"]).contains("takes no command"));
    assert!(server.fails(&["ports", "nope"]).contains("workspace nope not found"));
    assert!(server.fails(&["port-forward", "tiny", "99999"]).contains("LOCAL:REMOTE"));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent/ssh_config");
    server.ok(&["config-ssh", "--ssh-config", missing.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&missing).unwrap().contains("Host cove.tiny\n"));

    let rt = support::rt();
    let http = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        rt.block_on(async {
            let mut r = http.get(format!("{}{path}", server.url));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let resp = r.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<serde_json::Value>().await.unwrap_or_default())
        })
    };
    let token = server.token();
    let (status, body) = get("/api/v1/workspaces/tiny/ssh", Some(&token));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_request")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("WebSocket"), "{body}");
    let (status, body) = get("/api/v1/workspaces/tiny/tcp/0", Some(&token));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("not a TCP port"), "{body}");
    assert_eq!(get("/api/v1/workspaces/tiny/ssh", None).0, 401);
    assert_eq!(get("/api/v1/workspaces/nope/ports", Some(&token)).0, 404);
}
