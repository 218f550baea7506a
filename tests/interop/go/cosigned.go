// Command cosigned verifies a broker checkpoint and its witnesses' cosignatures with Go's
// golang.org/x/mod/sumdb/note, independently of the broker's Python code.
//
// The log's signature is checked by note.NewVerifier (Ed25519, type 0x01). sumdb/note has no
// cosignature/v1 verifier, so one is written here from the C2SP tlog-cosignature spec: key type
// 0x04, key ID SHA-256(name || "\n" || 0x04 || key)[:4], signature bytes timestamp (u64 big
// endian) || Ed25519 signature over "cosignature/v1\ntime <t>\n" || the note text.
//
// Input (stdin, JSON): {"note": "...", "log_key": "<vkey>", "witness_keys": ["<vkey>", ...]}.
// Output (stdout, JSON): {"text": "...", "verified": [{"name", "key_id", "timestamp"}]}, or exit
// status 1 with the error on stderr when note.Open refuses the note.
//
// Run in GOPATH mode with Debian's golang-golang-x-mod-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go run tests/interop/go/cosigned.go < job.json
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

const algCosignatureV1 = 0x04

type cosignatureVerifier struct {
	name string
	hash uint32
	key  ed25519.PublicKey
}

func (v *cosignatureVerifier) Name() string    { return v.name }
func (v *cosignatureVerifier) KeyHash() uint32 { return v.hash }

// Verify gets the signature bytes after the key ID: timestamp (8) || Ed25519 signature (64).
func (v *cosignatureVerifier) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig[:8])
	if t > 1<<63-1 {
		return false
	}
	var signed bytes.Buffer
	signed.WriteString("cosignature/v1\ntime ")
	signed.WriteString(strconv.FormatUint(t, 10))
	signed.WriteString("\n")
	signed.Write(msg)
	return ed25519.Verify(v.key, signed.Bytes(), sig[8:])
}

func keyID(name string, alg byte, key []byte) uint32 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte{'\n', alg})
	h.Write(key)
	return binary.BigEndian.Uint32(h.Sum(nil)[:4])
}

// newCosignatureVerifier parses "<name>+<key id hex>+<base64(0x04 || key)>".
func newCosignatureVerifier(vkey string) (*cosignatureVerifier, error) {
	name, rest, ok := strings.Cut(vkey, "+")
	if !ok {
		return nil, errors.New("malformed witness key")
	}
	hash16, key64, ok := strings.Cut(rest, "+")
	if !ok || len(hash16) != 8 || name == "" || strings.ContainsAny(name, " \t\n+") {
		return nil, errors.New("malformed witness key")
	}
	hash, err := strconv.ParseUint(hash16, 16, 32)
	if err != nil {
		return nil, errors.New("malformed witness key id")
	}
	raw, err := base64.StdEncoding.DecodeString(key64)
	if err != nil || len(raw) != 1+ed25519.PublicKeySize || raw[0] != algCosignatureV1 {
		return nil, errors.New("not a cosignature/v1 Ed25519 key")
	}
	key := ed25519.PublicKey(raw[1:])
	if keyID(name, algCosignatureV1, key) != uint32(hash) {
		return nil, errors.New("witness key id does not match name and key")
	}
	return &cosignatureVerifier{name: name, hash: uint32(hash), key: key}, nil
}

type job struct {
	Note        string   `json:"note"`
	LogKey      string   `json:"log_key"`
	WitnessKeys []string `json:"witness_keys"`
}

type verified struct {
	Name      string  `json:"name"`
	KeyID     string  `json:"key_id"`
	Timestamp *uint64 `json:"timestamp"`
}

func main() {
	var j job
	if err := json.NewDecoder(os.Stdin).Decode(&j); err != nil {
		fail(err)
	}
	logVerifier, err := note.NewVerifier(j.LogKey)
	if err != nil {
		fail(fmt.Errorf("log key: %w", err))
	}
	verifiers := []note.Verifier{logVerifier}
	witnesses := map[string]bool{}
	for _, vkey := range j.WitnessKeys {
		v, err := newCosignatureVerifier(vkey)
		if err != nil {
			fail(fmt.Errorf("witness key %q: %w", vkey, err))
		}
		verifiers = append(verifiers, v)
		witnesses[v.name] = true
	}
	n, err := note.Open([]byte(j.Note), note.VerifierList(verifiers...))
	if err != nil {
		fail(err)
	}
	// note.Open succeeds with any one known signature: require the log's own.
	out := struct {
		Text     string     `json:"text"`
		Verified []verified `json:"verified"`
	}{Text: n.Text, Verified: []verified{}}
	logSigned := false
	for _, sig := range n.Sigs {
		v := verified{Name: sig.Name, KeyID: fmt.Sprintf("%08x", sig.Hash)}
		if sig.Name == logVerifier.Name() && sig.Hash == logVerifier.KeyHash() {
			logSigned = true
		} else if witnesses[sig.Name] {
			raw, _ := base64.StdEncoding.DecodeString(sig.Base64)
			t := binary.BigEndian.Uint64(raw[4:12])
			v.Timestamp = &t
		}
		out.Verified = append(out.Verified, v)
	}
	if !logSigned {
		fail(errors.New("the log's signature is not among the verified ones"))
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
