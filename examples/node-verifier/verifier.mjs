// A service that verifies latchkey access tokens itself (jose and the
// JWKS), and refuses a token as soon as its session has ended, by following
// latchkey's revocation feed (long polling).
//
//   npm install
//   LATCHKEY_URL=http://127.0.0.1:8080 VERIFIER_KEY_FILE=verifier.key node verifier.mjs 8082
//
// GET / with "Authorization: Bearer <access token>" answers 200 {"sub","sid"}
// or 401 {"error":"invalid_token"}. Optional: LATCHKEY_ISSUER, LATCHKEY_AUDIENCE.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const latchkey = (process.env.LATCHKEY_URL ?? 'http://127.0.0.1:8080').replace(/\/$/, '');
const verifierKey = readFileSync(process.env.VERIFIER_KEY_FILE, 'utf8').replace(/\n$/, '');
const jwks = createRemoteJWKSet(new URL(`${latchkey}/.well-known/jwks.json`));
const ended = new Map(); // sid -> until (Unix seconds): refuse tokens of sid until then

// Bootstrap, then long-poll for what is new. A restart of latchkey only
// interrupts it: the cursor survives, so nothing is missed.
async function followTheFeed() {
  let cursor = null;
  for (;;) {
    const query = cursor ? `?after=${encodeURIComponent(cursor)}&wait=30` : '';
    try {
      const answer = await fetch(`${latchkey}/oauth/revocations${query}`, {
        headers: { authorization: `Bearer ${verifierKey}` },
        signal: AbortSignal.timeout(40_000),
      });
      if (answer.status === 410) { cursor = null; continue; } // cursor_expired: start over
      if (!answer.ok) throw new Error(`feed answered ${answer.status}`);
      const page = await answer.json();
      const now = Date.now() / 1000;
      for (const entry of page.revocations) ended.set(entry.sid, entry.until);
      for (const [sid, until] of ended) if (until <= now) ended.delete(sid);
      cursor = page.cursor;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 500)); // latchkey down or restarting
    }
  }
}

async function verify(token) {
  const { payload } = await jwtVerify(token, jwks, {
    typ: 'at+jwt',
    algorithms: ['EdDSA', 'ES256', 'RS256'],
    issuer: process.env.LATCHKEY_ISSUER,
    audience: process.env.LATCHKEY_AUDIENCE,
    requiredClaims: ['exp', 'iat', 'sub', 'sid'],
  });
  const until = ended.get(payload.sid);
  if (until !== undefined && until > Date.now() / 1000) throw new Error('the session has ended');
  return payload;
}

const server = createServer(async (request, response) => {
  const header = request.headers.authorization ?? '';
  const token = header.toLowerCase().startsWith('bearer ') ? header.slice(7) : '';
  let status = 200;
  let body;
  try {
    const claims = await verify(token);
    body = { sub: claims.sub, sid: claims.sid };
  } catch {
    status = 401;
    body = { error: 'invalid_token' };
  }
  response.writeHead(status, { 'content-type': 'application/json' });
  response.end(JSON.stringify(body));
});

followTheFeed();
server.listen(Number(process.argv[2] ?? 8082), '127.0.0.1', () => {
  console.log(`listening on ${server.address().port}`);
});
