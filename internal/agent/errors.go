package agent

import (
	"errors"
	"io/fs"
	"syscall"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// Sentinel errors of the agent.
var (
	// errTooLarge marks file requests over their size bound.
	errTooLarge = errors.New("too large")
	// errOutputLimit: a stream passed its cap; the run is killed.
	errOutputLimit = errors.New("output limit")
	// errPrewarmUnavailable means: run this exec the ordinary way.
	errPrewarmUnavailable = errors.New("prewarmed runtime unavailable")
)

// errorCode classifies an error for the host.
func errorCode(err error) agentproto.ErrorCode {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return agentproto.CodeNotFound
	case errors.Is(err, errTooLarge):
		return agentproto.CodeTooLarge
	}
	return ""
}
