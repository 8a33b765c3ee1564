package snapshot

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Config is the [snapshots] section of the configuration file: which
// keys sign the snapshots this host pushes, and which it trusts.
//
//	[snapshots]
//	signing_key = "/etc/firesandbox/snapshot-signing.key"
//	trusted_keys = ["ed25519:3q2+7w...="]
//	allow_unsigned = false
type Config struct {
	// TrustedKeys are the public keys ("ed25519:<base64>", as `firesandbox
	// key generate` prints them) whose signatures a pulled snapshot may
	// carry. A host that pushes should list its own key too.
	TrustedKeys []string `toml:"trusted_keys"`
	// SigningKey is the path of the private key that signs pushes (PEM,
	// PKCS #8, mode 0600); empty means this host does not push.
	SigningKey string `toml:"signing_key"`
	// AllowUnsigned turns trust off: pulled snapshots are used without
	// any signature check, and pushes without a signing key go unsigned.
	// Anyone who can write to the bucket can then run code on this host.
	AllowUnsigned bool `toml:"allow_unsigned"`
}

// Validate checks the configuration without reading the signing key.
func (c Config) Validate() error {
	_, err := c.Trust()
	return err
}

// Trust returns the trust policy the configuration describes.
func (c Config) Trust() (*Trust, error) {
	t := &Trust{allowUnsigned: c.AllowUnsigned}
	for _, s := range c.TrustedKeys {
		k, err := ParsePublicKey(s)
		if err != nil {
			return nil, fmt.Errorf("snapshots.trusted_keys: %w", err)
		}
		t.keys = append(t.keys, k)
	}
	return t, nil
}

// Signer loads the signing key; nil (and no error) if none is configured.
func (c Config) Signer() (*Signer, error) {
	if c.SigningKey == "" {
		return nil, nil
	}
	k, err := LoadPrivateKey(c.SigningKey)
	if err != nil {
		return nil, fmt.Errorf("snapshots.signing_key: %w", err)
	}
	return &Signer{key: k}, nil
}

// publicKeyPrefix starts the printed form of a public key.
const publicKeyPrefix = "ed25519:"

// FormatPublicKey prints a public key as ParsePublicKey reads it.
func FormatPublicKey(k ed25519.PublicKey) string {
	return publicKeyPrefix + base64.StdEncoding.EncodeToString(k)
}

// ParsePublicKey reads "ed25519:<base64 of the 32-byte key>".
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b64, ok := strings.CutPrefix(strings.TrimSpace(s), publicKeyPrefix)
	if !ok {
		return nil, fmt.Errorf("public key %q: want %s<base64>", s, publicKeyPrefix)
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key %q: want %s and the base64 of %d bytes", s, publicKeyPrefix, ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// GenerateKey makes a signing key and writes it to path (PEM, PKCS #8,
// mode 0600, in a directory it creates 0700 if needed). It never
// overwrites a file. It returns the public key.
func GenerateKey(path string) (ed25519.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	err = pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return pub, nil
}

// LoadPrivateKey reads a key GenerateKey wrote (or `openssl genpkey
// -algorithm ed25519`). Like ssh, it refuses a key file that users other
// than its owner can read or write.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("private key %s has mode %04o: other users can reach it; chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := readFileLimited(path, 64<<10)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("private key %s: want a PEM \"PRIVATE KEY\" block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("private key %s: %w", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("private key %s: a %T, want ed25519", path, k)
	}
	return ek, nil
}

// Signature is manifest.sig, pushed next to manifest.json: an ed25519
// signature over the manifest's bytes and the name the snapshot was
// pushed under (its key, or a hibernated sandbox's id and generation), so
// it cannot vouch for another manifest, nor for this one elsewhere.
type Signature struct {
	// Name is where the snapshot was pushed, as PushDir got it.
	Name string `json:"name"`
	// PublicKey is the signer's key, "ed25519:<base64>".
	PublicKey string `json:"public_key"`
	// Signature is the base64 of the signature of signedMessage.
	Signature string `json:"signature"`
}

const maxSignatureBytes = 4 << 10

// signedMessage is what a signature covers. Names never hold a newline.
func signedMessage(name string, manifest []byte) []byte {
	var b bytes.Buffer
	b.WriteString("firesandbox snapshot manifest v1\n")
	b.WriteString(name)
	b.WriteString("\n")
	b.Write(manifest)
	return b.Bytes()
}

// Signer signs the manifests of snapshots a host pushes.
type Signer struct{ key ed25519.PrivateKey }

// NewSigner returns a Signer for key.
func NewSigner(key ed25519.PrivateKey) *Signer { return &Signer{key: key} }

// PublicKey is the key that verifies this Signer's signatures.
func (s *Signer) PublicKey() ed25519.PublicKey { return s.key.Public().(ed25519.PublicKey) }

// Sign returns manifest.sig for manifest pushed as name.
func (s *Signer) Sign(name string, manifest []byte) []byte {
	sig := Signature{
		Name:      name,
		PublicKey: FormatPublicKey(s.PublicKey()),
		Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(s.key, signedMessage(name, manifest))),
	}
	b, _ := json.MarshalIndent(sig, "", "  ")
	return b
}

// Trust decides whether a pulled snapshot may be used: whose signatures
// count, and whether unsigned snapshots are accepted (trust turned off).
// The zero Trust accepts nothing pulled.
type Trust struct {
	keys          []ed25519.PublicKey
	allowUnsigned bool
}

// NewTrust trusts signatures by keys; allowUnsigned turns checks off.
func NewTrust(keys []ed25519.PublicKey, allowUnsigned bool) *Trust {
	return &Trust{keys: keys, allowUnsigned: allowUnsigned}
}

// AllowsUnsigned reports whether trust is off.
func (t *Trust) AllowsUnsigned() bool { return t != nil && t.allowUnsigned }

// Verify checks that sig (the bytes of manifest.sig, nil if there is
// none) is a signature by a trusted key of manifest pushed as name. With
// trust off it accepts anything, signed or not.
func (t *Trust) Verify(name string, manifest, sig []byte) error {
	if t.AllowsUnsigned() {
		return nil
	}
	if sig == nil {
		return fmt.Errorf("%w: %s has no %s; sign pushes with a key from `firesandbox key generate`, or set allow_unsigned to turn trust off", ErrUnsigned, name, signatureFile)
	}
	if t == nil || len(t.keys) == 0 {
		return fmt.Errorf("%w: %s is signed, but no trusted keys are configured (snapshots.trusted_keys)", ErrSignature, name)
	}
	if len(sig) > maxSignatureBytes {
		return fmt.Errorf("%w: %s: %s is larger than %d bytes", ErrSignature, name, signatureFile, maxSignatureBytes)
	}
	var s Signature
	dec := json.NewDecoder(bytes.NewReader(sig))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return fmt.Errorf("%w: %s: %s: %v", ErrSignature, name, signatureFile, err)
	}
	if s.Name != name {
		return fmt.Errorf("%w: %s carries the signature of %q (copied from another snapshot?)", ErrSignature, name, s.Name)
	}
	pub, err := ParsePublicKey(s.PublicKey)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrSignature, name, err)
	}
	if !t.trusts(pub) {
		return fmt.Errorf("%w: %s is signed by %s, which is not a trusted key", ErrSignature, name, FormatPublicKey(pub))
	}
	raw, err := base64.StdEncoding.DecodeString(s.Signature)
	if err != nil || len(raw) != ed25519.SignatureSize || !ed25519.Verify(pub, signedMessage(name, manifest), raw) {
		return fmt.Errorf("%w: %s: the signature by %s does not match its manifest (forged or altered)", ErrSignature, name, FormatPublicKey(pub))
	}
	return nil
}

func (t *Trust) trusts(pub ed25519.PublicKey) bool {
	for _, k := range t.keys {
		if k.Equal(pub) {
			return true
		}
	}
	return false
}

// origin is .origin in a pulled snapshot's directory. Its presence is
// what makes every later use of the snapshot check its signature again
// (a key may have been revoked since).
type origin struct {
	Name   string `json:"name"`
	Remote string `json:"remote"`
}

func writeOrigin(dir string, o origin) error {
	b, _ := json.Marshal(o)
	return writeFileAtomic(filepath.Join(dir, originFile), b, 0o644)
}

// checkOrigin verifies a directory's signature if it was pulled. name is
// what the signature must be for; empty takes the name the pull recorded.
func checkOrigin(dir, name string, raw []byte, t *Trust) error {
	ob, err := readFileLimited(filepath.Join(dir, originFile), 64<<10)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // made on this host
	} else if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrSignature, originFile, err)
	}
	var o origin
	if err := json.Unmarshal(ob, &o); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrSignature, originFile, err)
	}
	if name == "" {
		name = o.Name
	}
	sig, err := readFileLimited(filepath.Join(dir, signatureFile), maxSignatureBytes)
	if errors.Is(err, fs.ErrNotExist) {
		sig = nil
	} else if err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	return t.Verify(name, raw, sig)
}
