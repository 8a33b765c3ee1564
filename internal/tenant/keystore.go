package tenant

import (
	"context"
	"fmt"
)

// KeyStore keeps API keys (their hashes) and quota overrides: Store, in
// the state database of one host, or the shared directory of a cluster
// (cluster.Keys), so that every host sees the same keys and quotas. A
// key made through one works with the other: both make and hash keys
// with NewSecret and HashOf.
type KeyStore interface {
	// CreateKey makes a key for tenant t, labelled name, and returns it.
	CreateKey(ctx context.Context, t, name string) (string, Key, error)
	// Keys lists the keys, oldest first: every tenant's if all, else t's.
	Keys(ctx context.Context, t string, all bool) ([]Key, error)
	// RemoveKey deletes the key with ID ref (or whose secret is ref).
	RemoveKey(ctx context.Context, ref string) (Key, error)
	// Lookup finds the key secret (ErrUnknownKey if none).
	Lookup(ctx context.Context, secret string) (Key, error)
	// SetQuota replaces t's overrides; an empty Override removes them.
	SetQuota(ctx context.Context, t string, o Override) error
	// Quota returns t's overrides (empty if none).
	Quota(ctx context.Context, t string) (Override, error)
	// Tenants lists the tenants with keys or overrides, sorted.
	Tenants(ctx context.Context) ([]string, error)
}

var _ KeyStore = (*Store)(nil)

// NewSecret makes a fresh key: KeyPrefix and 40 hex digits.
func NewSecret() string { return newSecret() }

// HashOf is what a store keeps of a key: its SHA-256, in hex.
func HashOf(secret string) string { return hashOf(secret) }

// IDOf is the ID of the key whose hash is h.
func IDOf(h string) string { return h[:idLen] }

// CheckKeyName checks a tenant and a key's label as CreateKey does.
func CheckKeyName(t, name string) error {
	if t != Default {
		if err := ValidName(t); err != nil {
			return err
		}
	}
	if len(name) > MaxKeyName {
		return fmt.Errorf("%w: key name: at most %d printable characters", ErrBadName, MaxKeyName)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: key name: at most %d printable characters", ErrBadName, MaxKeyName)
		}
	}
	return nil
}
