// A real OpenID Connect provider (the oidc-provider package) on loopback, for Cove's
// OIDC login test (crates/server/tests/oidc.rs).
//
// It listens on 127.0.0.1, port 0, and prints `issuer <url>`. The test then starts Cove
// (whose port, and so redirect URI, is known only then) and writes one JSON line on
// stdin: {"client_id", "client_secret", "redirect_uri", "users": {sub: claims}}. The
// provider is made with that client and those accounts and prints `ready`.
//
// Interactions are driven with plain HTTP: /interaction/<uid> lists the accounts, and
// /interaction/<uid>/login?sub=<sub> logs that account in and grants the requested
// scopes (what a person would do on the provider's login and consent pages).

import http from 'node:http';
import readline from 'node:readline';
import Provider from 'oidc-provider';

let handler = (req, res) => {
  res.statusCode = 503;
  res.end('not configured yet');
};
const server = http.createServer((req, res) => handler(req, res));
server.listen(0, '127.0.0.1', () => {
  console.log(`issuer http://127.0.0.1:${server.address().port}`);
});
const issuer = () => `http://127.0.0.1:${server.address().port}`;

const lines = readline.createInterface({ input: process.stdin });
lines.once('line', (line) => {
  const setup = JSON.parse(line);
  const provider = new Provider(issuer(), {
    clients: [
      {
        client_id: setup.client_id,
        client_secret: setup.client_secret,
        redirect_uris: [setup.redirect_uri],
        grant_types: ['authorization_code'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    // Cove must send a PKCE challenge: refuse any authorization request without one.
    pkce: { required: () => true },
    scopes: ['openid', 'email', 'profile', 'groups'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['preferred_username', 'name'],
      groups: ['groups'],
    },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    cookies: { keys: ['cove-oidc-test-only'] },
    async findAccount(_ctx, sub) {
      const claims = setup.users[sub];
      if (!claims) return undefined;
      return { accountId: sub, claims: async () => ({ sub, ...claims }) };
    },
  });
  const callback = provider.callback();
  handler = async (req, res) => {
    const url = new URL(req.url, issuer());
    const login = url.pathname.match(/^\/interaction\/([^/]+)\/login$/);
    const page = url.pathname.match(/^\/interaction\/([^/]+)$/);
    try {
      if (login) {
        const details = await provider.interactionDetails(req, res);
        const sub = url.searchParams.get('sub');
        if (!setup.users[sub]) {
          res.statusCode = 400;
          res.end(`no account ${sub}`);
          return;
        }
        const grant = new provider.Grant({ accountId: sub, clientId: details.params.client_id });
        grant.addOIDCScope(details.params.scope);
        const grantId = await grant.save();
        await provider.interactionFinished(
          req,
          res,
          { login: { accountId: sub }, consent: { grantId } },
          { mergeWithLastSubmission: false },
        );
        return;
      }
      if (page) {
        const details = await provider.interactionDetails(req, res);
        res.setHeader('content-type', 'text/html; charset=utf-8');
        const links = Object.keys(setup.users)
          .map((sub) => `<li><a href="/interaction/${details.uid}/login?sub=${encodeURIComponent(sub)}">${sub}</a></li>`)
          .join('');
        res.end(`<!doctype html><title>Sign in</title><h1>Sign in</h1><ul>${links}</ul>`);
        return;
      }
      callback(req, res);
    } catch (e) {
      res.statusCode = 500;
      res.end(String(e));
    }
  };
  console.log('ready');
});
// The test closes stdin (or dies): stop with it, leaving nothing behind.
lines.on('close', () => process.exit(0));
