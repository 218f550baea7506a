// Open and build alert envelopes with npm `jose` (PROTOCOL.md section 4).
//
// This is the partner example of docs/partner-open-with-any-jose-library.md, and the
// interop test (tests/crypto/test_interop_node.py) runs it against broker.crypto.envelope.
// It reads one JSON job on stdin and writes one JSON result on stdout:
//   {"op": "open", "envelope", "sender_jwk", "as": [{"agency", "jwk"}, ...]}
//       -> [{"routing", "body", "inner_jws"}, ...]   (one per identity in "as")
//   {"op": "build", "routing", "body", "signer_jwk", "recipient_jwks": {agency: jwk}}
//       -> {"envelope"}
// Any refusal exits with status 1 and the reason on stderr.
import * as jose from 'jose'

const SIG_ALGS = ['Ed25519', 'EdDSA'] // EdDSA only for partners predating RFC 9864
const KEY_ALG = 'ECDH-ES+A256KW'
const ENC = 'A256GCM'
const MAX_ENVELOPE = 1 << 20

const utf8 = new TextEncoder()
const text = new TextDecoder('utf-8', { fatal: true })

function refuse(reason) {
  throw new Error(reason)
}

function same(a, b) {
  // JSON equality: member order ignored, types and array order kept.
  const canon = (v) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canon(v[k])}`).join(',')}}`
      : Array.isArray(v)
        ? `[${v.map(canon).join(',')}]`
        : JSON.stringify(v)
  return canon(a) === canon(b)
}

function exactly(obj, members, what) {
  const got = Object.keys(obj).sort().join(',')
  if (got !== [...members].sort().join(',')) refuse(`${what} must have exactly ${members}`)
}

// Verify a compact JWS against the directory key and return its parsed payload. The header
// allowlist: alg Ed25519 (or EdDSA), the expected typ, kid present, nothing else.
async function verify(token, key, typ) {
  const { payload, protectedHeader: h } = await jose.compactVerify(token, key, {
    algorithms: SIG_ALGS,
  })
  exactly(h, ['alg', 'kid', 'typ'], 'a JWS header')
  if (h.typ !== typ) refuse(`typ must be ${typ}`)
  // jose's JSON.parse keeps the last of duplicate members; the broker has already refused
  // such payloads before storing them, so this is acceptable for a recipient.
  return { kid: h.kid, payload: JSON.parse(text.decode(payload)) }
}

async function open(job) {
  if (job.envelope.length > MAX_ENVELOPE) refuse('envelope too large')
  const senderKey = await jose.importJWK(job.sender_jwk, 'Ed25519')
  // 3. Outer layer.
  const outer = await verify(job.envelope, senderKey, 'alert-envelope+jws')
  if (outer.kid !== job.sender_jwk.kid) refuse('outer kid is not the sender key')
  exactly(outer.payload, ['routing', 'jwe'], 'the outer payload')
  const { routing, jwe } = outer.payload
  const results = []
  for (const me of job.as) {
    // 4. Addressing: we are a recipient and exactly one entry carries our kid.
    if (!routing.recipients.includes(me.agency)) refuse('not addressed to us')
    const mine = jwe.recipients.filter((r) => r.header.kid === me.jwk.kid)
    if (mine.length !== 1) refuse('not exactly one JWE entry for our key')
    // 5. Decrypt our entry only, with explicit allowlists. jose refuses `zip` by itself.
    const { plaintext, protectedHeader } = await jose.generalDecrypt(
      { ...jwe, recipients: mine },
      await jose.importJWK(me.jwk, KEY_ALG),
      { keyManagementAlgorithms: [KEY_ALG], contentEncryptionAlgorithms: [ENC] },
    )
    exactly(protectedHeader, ['enc', 'cty'], 'the JWE protected header')
    if (protectedHeader.cty !== 'alert+jws') refuse('cty must be alert+jws')
    // 6. Inner layer: same signer, verified, bound to the routing we were delivered under.
    const innerJws = text.decode(plaintext)
    const innerKid = jose.decodeProtectedHeader(innerJws).kid
    if (innerKid !== outer.kid) refuse('inner and outer signers differ')
    const inner = await verify(innerJws, senderKey, 'alert+jws')
    const p = inner.payload
    exactly(p, ['mid', 'iat', 'sender', 'recipients', 'routing', 'body'], 'the inner payload')
    for (const f of ['mid', 'iat', 'sender', 'recipients']) {
      if (!same(p[f], routing[f])) refuse(`inner ${f} differs from the routing`)
    }
    if (!same(p.routing, routing)) refuse('inner routing differs from the outer routing')
    if (!p.recipients.includes(me.agency)) refuse('the sender did not address us')
    results.push({ routing, body: p.body, inner_jws: innerJws })
  }
  return results
}

async function sign(payload, key, kid, typ) {
  return new jose.CompactSign(utf8.encode(JSON.stringify(payload)))
    .setProtectedHeader({ alg: 'Ed25519', kid, typ })
    .sign(key)
}

async function build(job) {
  const signer = await jose.importJWK(job.signer_jwk, 'Ed25519')
  const kid = job.signer_jwk.kid
  const { routing, body } = job
  const { mid, iat, sender, recipients } = routing
  const inner = await sign({ mid, iat, sender, recipients, routing, body }, signer, kid, 'alert+jws')
  // General JSON even for one recipient; jose writes the protected header compactly.
  const encrypt = new jose.GeneralEncrypt(utf8.encode(inner))
  encrypt.setProtectedHeader({ enc: ENC, cty: 'alert+jws' })
  for (const agency of recipients) {
    const jwk = job.recipient_jwks[agency]
    const key = await jose.importJWK(jwk, KEY_ALG)
    encrypt.addRecipient(key).setUnprotectedHeader({ alg: KEY_ALG, kid: jwk.kid })
  }
  // With a single recipient jose puts the epk into the protected header, which the profile
  // forbids (it is exactly {enc, cty}). With two or more, each epk goes into its entry's
  // header. So add a throwaway recipient and drop its entry afterwards: the protected header,
  // the only header under the AAD, is unchanged.
  const lone = recipients.length === 1
  if (lone) {
    const { publicKey } = await jose.generateKeyPair(KEY_ALG, { crv: 'X25519' })
    encrypt.addRecipient(publicKey).setUnprotectedHeader({ alg: KEY_ALG })
  }
  const jwe = await encrypt.encrypt()
  if (lone) jwe.recipients.pop()
  return { envelope: await sign({ routing, jwe }, signer, kid, 'alert-envelope+jws') }
}

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const job = JSON.parse(Buffer.concat(chunks).toString('utf8'))
try {
  const result = job.op === 'open' ? await open(job) : await build(job)
  process.stdout.write(JSON.stringify(result))
} catch (err) {
  process.stderr.write(`${err.code ?? 'refused'}: ${err.message}\n`)
  process.exit(1)
}
