package sandbox

import "errors"

// Sentinel errors; the API maps them to status codes.
var (
	ErrNotReady   = errors.New("guest did not become ready")
	ErrBadRequest = errors.New("bad request")
)
