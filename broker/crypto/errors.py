"""Crypto failures, one class per distinct reason.

Each class carries a stable dotted `code` (logged in `msg.rejected` leaves and returned in
problem+json bodies) and nothing about HTTP: the broker's table of problems
(`broker.errors.PROBLEMS`) gives each code its status. Verification code raises these; it
never returns False.
"""

from typing import ClassVar


class CryptoError(Exception):
    """Base class: an envelope, token or key was refused."""

    code: ClassVar[str] = "crypto.error"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or (self.__doc__ or self.code).strip())

    @property
    def detail(self) -> str:
        """The human-readable reason."""
        return str(self.args[0])


# --- Envelopes and compact tokens (JWS, JWE, JSON payloads) -------------------------------


class EnvelopeError(CryptoError):
    """The envelope or token was refused."""

    code = "envelope.invalid"


class TooLarge(EnvelopeError):
    """Input exceeds a size limit."""

    code = "envelope.too_large"


class Malformed(EnvelopeError):
    """Input is not well formed (segments, base64url, JSON syntax or types)."""

    code = "envelope.malformed"


class DuplicateKey(EnvelopeError):
    """A JSON object has the same member name twice."""

    code = "envelope.duplicate_key"


class NotIJson(EnvelopeError):
    """JSON outside I-JSON (RFC 7493): NaN or Infinity, a lone surrogate, an unsafe integer."""

    code = "envelope.not_i_json"


class TooDeep(EnvelopeError):
    """JSON nests deeper than allowed."""

    code = "envelope.too_deep"


class AlgNotAllowed(EnvelopeError):
    """The `alg` is not in the allowlist."""

    code = "envelope.alg_not_allowed"


class HeaderForbidden(EnvelopeError):
    """A forbidden header member is present (jku, jwk, x5u, x5c, crit, b64)."""

    code = "envelope.header_forbidden"


class HeaderUnknown(EnvelopeError):
    """A header member outside the allowlist is present."""

    code = "envelope.header_unknown"


class ZipForbidden(EnvelopeError):
    """A `zip` header is present: compression is refused."""

    code = "envelope.zip_forbidden"


class TypMismatch(EnvelopeError):
    """The `typ` header is not the one expected here."""

    code = "envelope.typ_mismatch"


class BadKid(EnvelopeError):
    """The `kid` is missing or is not an RFC 7638 SHA-256 thumbprint."""

    code = "envelope.bad_kid"


class BadSignature(EnvelopeError):
    """The signature does not verify."""

    code = "envelope.bad_signature"


class KidMismatch(EnvelopeError):
    """The token's `kid` is not the expected key (or inner and outer signers differ)."""

    code = "envelope.kid_mismatch"


class BadPayload(EnvelopeError):
    """The signed payload does not have the required members or types."""

    code = "envelope.bad_payload"


class SenderMismatch(EnvelopeError):
    """`routing.sender` is not the agency that owns the signing key."""

    code = "envelope.sender_mismatch"


class NotAddressedToUs(EnvelopeError):
    """Our agency is not a recipient, or not exactly one JWE entry carries one of our kids."""

    code = "envelope.not_addressed_to_us"


class RoutingMismatch(EnvelopeError):
    """The inner signed payload does not match the outer routing."""

    code = "envelope.routing_mismatch"


class JweStructure(EnvelopeError):
    """The JWE is not in the allowed shape (General JSON, exact protected header, sizes)."""

    code = "envelope.jwe_structure"


class LowOrderEpk(EnvelopeError):
    """A JWE ephemeral key is a low-order X25519 point (all-zero shared secret)."""

    code = "envelope.low_order_epk"


class JweRecipientsMismatch(EnvelopeError):
    """The JWE entries are not exactly one valid encryption key per routed recipient."""

    code = "envelope.jwe_recipients_mismatch"


class DecryptFailed(EnvelopeError):
    """Our JWE entry does not decrypt."""

    code = "envelope.decrypt_failed"


class IatTooLate(EnvelopeError):
    """`iat` is later than the log time plus the allowed clock skew."""

    code = "envelope.iat_too_late"


# --- Keys -----------------------------------------------------------------------------------


class InvalidKey(CryptoError):
    """The key is not a valid key of the kind required here."""

    code = "key.invalid"


class WrongCurve(InvalidKey):
    """The key type or curve does not fit its use (sig: OKP Ed25519, enc: OKP X25519)."""

    code = "key.wrong_curve"


class WrongUse(InvalidKey):
    """The key's `use` or `alg` is missing, unknown or not the one required here."""

    code = "key.wrong_use"


class PrivateMaterial(InvalidKey):
    """A private key member (such as `d`) was sent where a public key belongs."""

    code = "key.private_material"


class LowOrderKey(InvalidKey):
    """The public key is a small-order point (forgeable signatures, zero shared secret)."""

    code = "key.low_order"


class KeyKidMismatch(InvalidKey):
    """The key's `kid` is not its RFC 7638 thumbprint."""

    code = "key.kid_mismatch"


class KeyNotValidAt(InvalidKey):
    """The key was not valid (nbf, exp, revoked_at) at the time that matters."""

    code = "key.not_valid_at"


class KeyCompromised(InvalidKey):
    """The key was marked compromised at or before the time that matters."""

    code = "key.compromised"


class WeakPassphrase(InvalidKey):
    """The passphrase has less than 128 bits of entropy (26 base32 or 22 base64url chars)."""

    code = "key.weak_passphrase"


class InsecureKeyStorage(InvalidKey):
    """A private key file or its directory is accessible to group or others."""

    code = "key.insecure_storage"


class KeyUnreadable(InvalidKey):
    """The key file does not decrypt or does not hold the expected kind of key."""

    code = "key.unreadable"
