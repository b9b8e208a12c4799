#!/usr/bin/env node
// ws-echo.mjs — WebSocket echo client for Cove's tests and benches.
//
//   node tests/browser/ws-echo.mjs URL [-n ROUNDS] [--size BYTES] [--binary]
//        [-H 'Name: value']... [--connect HOST[:PORT]] [--warmup N] [--timeout SECONDS]
//
// Opens one WebSocket to URL (ws:// or wss://), sends ROUNDS messages one after another
// (each waits for its echo, which must match byte for byte), and prints one JSON line:
//   {"ok":true,"rounds":2000,"bytes":32,"median_ms":0.21,"p99_ms":0.5,"mean_ms":..,"min_ms":..,"max_ms":..}
// Exit 0 when every echo came back intact, 1 otherwise (with {"ok":false,"error":..}).
//
// Hostnames ending in ".localhost" are connected to 127.0.0.1 (Node's resolver does not
// know them); --connect HOST[:PORT] connects there instead while the Host header (and
// SNI) keep the URL's host. -H adds request headers (e.g. 'Authorization: Bearer TOKEN').
import WebSocket from 'ws';

function usage(msg) {
  if (msg) console.error(`ws-echo: ${msg}`);
  console.error('usage: ws-echo.mjs URL [-n ROUNDS] [--size BYTES] [--binary] [-H "Name: value"]... [--connect HOST[:PORT]] [--warmup N] [--timeout S]');
  process.exit(2);
}

const args = process.argv.slice(2);
const opts = { rounds: 100, size: 32, binary: false, headers: {}, connect: null, warmup: 10, timeout: 30 };
let url = null;
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  const next = () => (i + 1 < args.length ? args[++i] : usage(`${a} needs a value`));
  if (a === '-n' || a === '--rounds') opts.rounds = Number(next());
  else if (a === '--size') opts.size = Number(next());
  else if (a === '--binary') opts.binary = true;
  else if (a === '--warmup') opts.warmup = Number(next());
  else if (a === '--timeout') opts.timeout = Number(next());
  else if (a === '--connect') opts.connect = next();
  else if (a === '-H' || a === '--header') {
    const h = next();
    const colon = h.indexOf(':');
    if (colon < 1) usage(`bad header ${h}`);
    opts.headers[h.slice(0, colon).trim()] = h.slice(colon + 1).trim();
  } else if (a === '-h' || a === '--help') usage();
  else if (!url) url = a;
  else usage(`unexpected argument ${a}`);
}
if (!url) usage('URL is required');
if (!(opts.rounds >= 1 && opts.size >= 1)) usage('rounds and size must be positive');

const target = new URL(url);
let connectHost = null;
let connectPort = null;
if (opts.connect) {
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(opts.connect);
  if (!m) usage(`bad --connect ${opts.connect}`);
  connectHost = m[1].replace(/^\[|\]$/g, '');
  connectPort = m[2] ? Number(m[2]) : null;
} else if (target.hostname === 'localhost' || target.hostname.endsWith('.localhost')) {
  connectHost = '127.0.0.1';
}

const wsOptions = { headers: opts.headers, perMessageDeflate: false, handshakeTimeout: opts.timeout * 1000 };
if (connectHost) {
  // Resolve every name to connectHost; a different port is done with a custom connection.
  wsOptions.lookup = (_host, o, cb) => {
    const family = connectHost.includes(':') ? 6 : 4;
    if (o && o.all) cb(null, [{ address: connectHost, family }]);
    else cb(null, connectHost, family);
  };
  if (connectPort) {
    const net = await import('node:net');
    const tls = await import('node:tls');
    wsOptions.createConnection = (o) =>
      target.protocol === 'wss:'
        ? tls.connect({ ...o, host: connectHost, port: connectPort, servername: target.hostname })
        : net.connect({ host: connectHost, port: connectPort });
  }
}

function fail(error) {
  console.log(JSON.stringify({ ok: false, url, error: String(error) }));
  process.exit(1);
}
const timer = setTimeout(() => fail(`timed out after ${opts.timeout}s`), opts.timeout * 1000);

const ws = new WebSocket(url, wsOptions);
ws.binaryType = 'nodebuffer';
ws.on('unexpected-response', (_req, res) => fail(`handshake answered HTTP ${res.statusCode}`));
ws.on('error', (e) => fail(e.message || e));

const payload = Buffer.alloc(opts.size);
for (let i = 0; i < payload.length; i++) payload[i] = 97 + (i % 26); // a..z
const text = payload.toString('latin1');
const times = [];
let pending = null;

ws.on('message', (data, isBinary) => {
  const t = process.hrtime.bigint();
  if (!pending) return fail('unexpected message');
  const got = Buffer.isBuffer(data) ? data : Buffer.from(data);
  if (isBinary !== opts.binary || !got.equals(payload)) return fail(`echo mismatch (${got.length} bytes, binary=${isBinary})`);
  const { start, resolve } = pending;
  pending = null;
  resolve(Number(t - start) / 1e6);
});

function roundTrip() {
  return new Promise((resolve) => {
    pending = { start: process.hrtime.bigint(), resolve };
    ws.send(opts.binary ? payload : text, { binary: opts.binary });
  });
}

ws.on('open', async () => {
  for (let i = 0; i < opts.warmup; i++) await roundTrip();
  for (let i = 0; i < opts.rounds; i++) times.push(await roundTrip());
  clearTimeout(timer);
  const sorted = [...times].sort((a, b) => a - b);
  const pct = (p) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
  const r = (x) => Math.round(x * 1000) / 1000;
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  console.log(
    JSON.stringify({
      ok: true,
      rounds: times.length,
      bytes: opts.size,
      median_ms: r(median),
      p99_ms: r(pct(99)),
      mean_ms: r(times.reduce((a, b) => a + b, 0) / times.length),
      min_ms: r(sorted[0]),
      max_ms: r(sorted[sorted.length - 1]),
    }),
  );
  ws.close(1000);
  ws.on('close', () => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
});
