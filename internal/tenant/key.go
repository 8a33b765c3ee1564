package tenant

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"time"
)

// KeyPrefix starts every key this package makes: E2B's SDKs expect it.
const KeyPrefix = "e2b_"

// keyHexLen is how many hex digits follow the prefix (160 bits).
const keyHexLen = 40

// idLen is how many hex digits of a key's hash make its ID.
const idLen = 12

// Key is an API key as stored: never the key itself.
type Key struct {
	// ID names the key in listings and for removal.
	ID     string
	Tenant string
	// Name is the label it was given when made.
	Name       string
	CreatedAt  time.Time
	LastUsedAt time.Time // zero if never used
}

// newSecret makes a fresh key.
func newSecret() string {
	b := make([]byte, keyHexLen/2)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return KeyPrefix + hex.EncodeToString(b)
}

// WellFormed says whether s has the shape of a key this package makes.
func WellFormed(s string) bool {
	h, ok := strings.CutPrefix(s, KeyPrefix)
	if !ok || len(h) != keyHexLen {
		return false
	}
	for i := 0; i < len(h); i++ {
		if !(h[i] >= '0' && h[i] <= '9' || h[i] >= 'a' && h[i] <= 'f') {
			return false
		}
	}
	return true
}

// hashOf is what the database keeps of a key.
func hashOf(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}
