package tenant

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
)

// Authenticator maps a presented key to its tenant: the server's single
// legacy key (if set) is Default's, any other must be in the Store.
type Authenticator struct {
	store     KeyStore
	legacy    [sha256.Size]byte
	hasLegacy bool
}

// NewAuthenticator checks keys against store (nil: none) and the single
// legacy key (empty: none).
func NewAuthenticator(store KeyStore, legacy string) *Authenticator {
	a := &Authenticator{store: store}
	if legacy != "" {
		a.legacy, a.hasLegacy = sha256.Sum256([]byte(legacy)), true
	}
	return a
}

// Authenticate returns the tenant key belongs to, or ErrUnknownKey.
func (a *Authenticator) Authenticate(ctx context.Context, key string) (string, error) {
	if key == "" {
		return "", ErrUnknownKey
	}
	if a.hasLegacy {
		h := sha256.Sum256([]byte(key)) // equal lengths: the compare leaks nothing
		if subtle.ConstantTimeCompare(h[:], a.legacy[:]) == 1 {
			return Default, nil
		}
	}
	if a.store == nil {
		return "", ErrUnknownKey
	}
	k, err := a.store.Lookup(ctx, key)
	if err != nil {
		return "", err
	}
	return k.Tenant, nil
}
