// The web terminal's page: xterm.js on a WebSocket to the agent (protocol in
// crates/agent/src/terminal.rs). The session id lives in the URL and in sessionStorage, so
// a reload reattaches to the same shell; after a drop the page reconnects with backoff and
// the agent replays the scrollback.
(function () {
  "use strict";
  const STORE_KEY = "cove-terminal-session";
  const status = document.getElementById("status");
  const term = new Terminal({
    cursorBlink: true,
    scrollback: 10000,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    theme: { background: "#1e1e1e", foreground: "#d4d4d4", cursor: "#d4d4d4", selectionBackground: "#264f78" },
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  term.focus();

  const params = new URLSearchParams(location.search);
  let session = params.get("session") || sessionStorage.getItem(STORE_KEY);
  let ws = null;
  let ended = false;
  let backoff = 250;
  const encoder = new TextEncoder();

  function show(text, cls) {
    status.textContent = text;
    status.className = cls || "";
    status.hidden = !text;
  }

  function remember(id) {
    session = id;
    if (id) sessionStorage.setItem(STORE_KEY, id); else sessionStorage.removeItem(STORE_KEY);
    const url = new URL(location.href);
    if (id) url.searchParams.set("session", id); else url.searchParams.delete("session");
    history.replaceState(null, "", url);
  }

  function send(data) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(data);
  }

  function connect() {
    const q = new URLSearchParams({ cols: term.cols, rows: term.rows });
    if (session) q.set("session", session);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(scheme + "//" + location.host + "/ws?" + q);
    socket.binaryType = "arraybuffer";
    ws = socket;
    socket.onmessage = (event) => {
      if (typeof event.data !== "string") {
        term.write(new Uint8Array(event.data));
        return;
      }
      const msg = JSON.parse(event.data);
      if (msg.type === "attached") {
        // The scrollback follows: start from a clean screen so it is not shown twice.
        term.reset();
        remember(msg.session);
        backoff = 250;
        show("");
        send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
      } else if (msg.type === "exit") {
        ended = true;
        remember(null);
        const how = msg.signal ? "signal " + msg.signal : "exit " + msg.code;
        term.write("\r\n[session ended: " + how + "; press Enter for a new one]\r\n");
        show("session ended", "ended");
      } else if (msg.type === "error") {
        term.write("\r\n[" + msg.message + "]\r\n");
      }
    };
    socket.onclose = () => {
      if (ws !== socket || ended) return;
      show("reconnecting\u2026");
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  term.onData((data) => {
    if (ended) {
      if (data === "\r") {
        ended = false;
        term.reset();
        show("");
        connect();
      }
      return;
    }
    send(encoder.encode(data));
  });
  term.onBinary((data) => {
    const bytes = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
    send(bytes);
  });
  term.onResize(({ cols, rows }) => send(JSON.stringify({ type: "resize", cols, rows })));
  window.addEventListener("resize", () => fit.fit());
  connect();
})();
