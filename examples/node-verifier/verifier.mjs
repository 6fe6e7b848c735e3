// A service that verifies latchkey access tokens itself (jose and the
// JWKS), and refuses a token as soon as its session has ended, by following
// latchkey's revocation feed (long polling).
//
//   npm install
//   LATCHKEY_URL=http://127.0.0.1:8080 VERIFIER_KEY_FILE=verifier.key node verifier.mjs 8082
//
// GET / with "Authorization: Bearer <access token>" answers 200 {"sub","sid"},
// 401 {"error":"invalid_token"}, or 503 while the feed is not followed (before
// its first answer, or when it has been silent too long: latchkey down, a
// wrong key), since then it could not know of revocations. Optional:
// LATCHKEY_ISSUER, LATCHKEY_AUDIENCE. If you allow JWT clock leeway, keep
// entries until `until` + leeway.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const latchkey = (process.env.LATCHKEY_URL ?? 'http://127.0.0.1:8080').replace(/\/$/, '');
const verifierKey = readFileSync(process.env.VERIFIER_KEY_FILE, 'utf8').replace(/\n$/, '');
const jwks = createRemoteJWKSet(new URL(`${latchkey}/.well-known/jwks.json`));
const ended = new Map(); // sid -> until (Unix seconds): refuse tokens of sid until then
// Answers hold up to WAIT seconds; a feed silent for longer than STALE is
// broken (a wrong key, latchkey down): refuse rather than miss revocations.
const WAIT = 30, STALE = 45, PAGE = 50_000;
const feed = { ready: false, lastAnswer: 0 };

// Bootstrap, then long-poll for what is new. A restart of latchkey only
// interrupts it: the cursor survives, so nothing is missed.
async function followTheFeed() {
  let cursor = null;
  let more = false;
  for (;;) {
    const query = cursor ? `?after=${encodeURIComponent(cursor)}&wait=${more ? 0 : WAIT}` : '';
    try {
      const answer = await fetch(`${latchkey}/oauth/revocations${query}`, {
        headers: { authorization: `Bearer ${verifierKey}` },
        signal: AbortSignal.timeout((WAIT + 10) * 1000),
      });
      if (!answer.ok) {
        await answer.body?.cancel();
        console.error(`revocation feed: HTTP ${answer.status}`);
        if (answer.status === 410) { cursor = null; more = false; continue; } // cursor_expired: start over
        throw new Error(`HTTP ${answer.status}`);
      }
      const page = await answer.json();
      const now = Date.now() / 1000;
      for (const entry of page.revocations) ended.set(entry.sid, entry.until);
      for (const [sid, until] of ended) if (until <= now) ended.delete(sid);
      cursor = page.cursor;
      more = page.revocations.length >= PAGE; // a full page: more follows
      feed.lastAnswer = now;
      if (!more) feed.ready = true;
    } catch (error) {
      console.error(`revocation feed: ${error.message}`); // latchkey down or restarting
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
}

class Unavailable extends Error {}

async function verify(token) {
  if (!feed.ready || Date.now() / 1000 - feed.lastAnswer > STALE) throw new Unavailable();
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
  } catch (error) {
    [status, body] = error instanceof Unavailable
      ? [503, { error: 'revocations_unavailable' }]
      : [401, { error: 'invalid_token' }];
  }
  response.writeHead(status, { 'content-type': 'application/json' });
  response.end(JSON.stringify(body));
});

followTheFeed();
server.listen(Number(process.argv[2] ?? 8082), '127.0.0.1', () => {
  console.log(`listening on ${server.address().port}`);
});
