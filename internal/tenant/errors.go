package tenant

import "errors"

// Sentinel errors.
var (
	// ErrBadName means a tenant name is not one this server takes.
	ErrBadName = errors.New("invalid tenant name")
	// ErrUnknownKey means no key matches: it was never made, or removed.
	ErrUnknownKey = errors.New("unknown API key")
	// ErrNoKey means no key has the ID given to RemoveKey.
	ErrNoKey = errors.New("no such key")
	// ErrQuota means the tenant is at one of its quotas (HTTP 429).
	ErrQuota = errors.New("quota exceeded")
)
