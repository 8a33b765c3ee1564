package e2b

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// ErrBadConfig means a Config or Deps cannot work.
var ErrBadConfig = errors.New("e2b: bad configuration")

// Errors of the adapter itself; the API's status map does not know them.
var (
	errBadRequest   = errors.New("bad request")
	errNotFound     = errors.New("not found")
	errUnauthorized = errors.New("unauthorized")
	errConflict     = errors.New("conflict")
	errUnsupported  = errors.New("not supported by firesandbox")
	errNoNetwork    = errors.New("the sandbox has no network")
)

// apiError is E2B's error body. The SDKs read the numeric code, not the
// HTTP status: without it SandboxNotFoundError is never raised.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// statusOf is the API's status for err, with E2B's own meanings on top:
// a deleted sandbox does not exist (404, so kill answers false).
func (h *Handler) statusOf(err error) int {
	switch {
	case errors.Is(err, errBadRequest), errors.Is(err, network.ErrInvalidPolicy):
		return http.StatusBadRequest
	case errors.Is(err, errUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, errNotFound), errors.Is(err, sandbox.ErrSandboxDeleted), errors.Is(err, sandbox.ErrNoSandbox):
		return http.StatusNotFound
	case errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errConflict):
		return http.StatusConflict
	case errors.Is(err, errUnsupported):
		return http.StatusNotImplemented
	case errors.Is(err, errNoNetwork), errors.Is(err, errGone):
		return http.StatusBadGateway
	}
	return h.deps.Status(err)
}

// fail writes err as E2B's error body.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := h.statusOf(err)
	if status >= 500 && status != http.StatusNotImplemented && status != http.StatusServiceUnavailable {
		h.log.Error("e2b request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	switch status {
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "1")
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "5")
	}
	writeJSON(w, status, apiError{Code: status, Message: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // a bug: every response type marshals
		status = http.StatusInternalServerError
		b, _ = json.Marshal(apiError{Code: status, Message: "encode response: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func badRequest(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errBadRequest, fmt.Sprintf(format, a...))
}
