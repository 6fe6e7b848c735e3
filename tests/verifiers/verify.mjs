// Verify a latchkey access token with jose, using the server's JWKS.
// Usage: node verify.mjs BASE_URL TOKEN [ISSUER [AUDIENCE]]
// Prints the token's claims as JSON; exits with an error if it does not verify.
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [baseUrl, token, issuer, audience] = process.argv.slice(2);
// Caches the key set, and fetches it again when a token names a key it does
// not have yet (after a rotation).
const jwks = createRemoteJWKSet(new URL('/.well-known/jwks.json', baseUrl));

const { payload } = await jwtVerify(token, jwks, {
  typ: 'at+jwt',
  algorithms: ['EdDSA', 'ES256', 'RS256'],
  issuer,
  audience,
  requiredClaims: ['exp', 'iat', 'sub', 'sid'],
});
console.log(JSON.stringify(payload));
