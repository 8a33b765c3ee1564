package e2b

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// tokens derives each sandbox's tokens from one server secret, so nothing
// per sandbox is stored and a token is valid exactly as long as its
// sandbox's record names the same id and tenant. The envd access token
// authenticates the data plane (X-Access-Token); the traffic token
// (E2B-Traffic-Access-Token) the code interpreter and other ports.
type tokens struct{ secret []byte }

// Token kinds.
const (
	kindEnvd    = "envd"
	kindTraffic = "traffic"
)

func (t tokens) make(kind, id, tenant string) string {
	m := hmac.New(sha256.New, t.secret)
	m.Write([]byte(kind + "\x00" + id + "\x00" + tenant))
	return hex.EncodeToString(m.Sum(nil))
}

// check says whether tok is the kind's token of the sandbox (constant
// time).
func (t tokens) check(kind, id, tenant, tok string) bool {
	want := t.make(kind, id, tenant)
	return tok != "" && hmac.Equal([]byte(tok), []byte(want))
}

// LoadSecret reads the token secret from path, creating it (32 random
// bytes, mode 0600) if it does not exist. Losing the file invalidates
// every sandbox's token, nothing else.
func LoadSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) < 32 {
			return nil, fmt.Errorf("%w: %s holds %d bytes, want 32", ErrBadConfig, path, len(b))
		}
		return b, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read token secret: %w", err)
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("write token secret: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, fmt.Errorf("write token secret: %w", err)
	}
	// Link, not rename: a secret another process wrote meanwhile wins.
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, fs.ErrExist) {
		os.Remove(tmp)
		return nil, fmt.Errorf("write token secret: %w", err)
	}
	os.Remove(tmp)
	return os.ReadFile(path)
}
