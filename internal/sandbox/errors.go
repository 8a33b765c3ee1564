package sandbox

import "errors"

// Sentinel errors; the API maps them to status codes.
var (
	ErrNotReady   = errors.New("guest did not become ready")
	ErrBadRequest = errors.New("bad request")

	// Errors of long-lived sandboxes.
	ErrNoSandbox      = errors.New("no such sandbox")
	ErrSandboxDeleted = errors.New("sandbox deleted")
	ErrSandboxLost    = errors.New("sandbox lost")
	ErrSandboxBusy    = errors.New("sandbox busy")
	ErrClosed         = errors.New("sandboxes: shutting down")

	// ErrNoNetwork: a request needs a network device that this server (or
	// this VM) does not have.
	ErrNoNetwork = errors.New("no network on this server")
)
