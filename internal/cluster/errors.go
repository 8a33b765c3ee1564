package cluster

import "errors"

// Sentinel errors; the API maps ErrFull, ErrUnavailable and ErrFenced to
// 503 (Retry-After), so a load balancer or client tries again.
var (
	// ErrFull means no live host has room for another sandbox.
	ErrFull = errors.New("no host has room")
	// ErrUnavailable means the directory (PostgreSQL) did not answer.
	ErrUnavailable = errors.New("cluster directory unavailable")
	// ErrFenced means this host's lease lapsed or another host owns the
	// sandbox now: the write was refused and changed nothing.
	ErrFenced = errors.New("not the owner")
	// ErrNotFound means the directory has no such sandbox, host or tenant.
	ErrNotFound = errors.New("not in the cluster directory")
	// ErrSchema means the directory was migrated by a newer firesandbox.
	ErrSchema = errors.New("cluster directory schema")
	// ErrInvalidConfig means a Config cannot work.
	ErrInvalidConfig = errors.New("invalid cluster configuration")
)
