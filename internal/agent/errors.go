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
	// errNoUser: a request named a user the guest does not have.
	errNoUser = errors.New("no such user in the guest")
	// errNoProcess: a process call named a pid the agent did not start,
	// or one that has ended.
	errNoProcess = errors.New("no such process")
	// errNotRegular: a file call met a FIFO, device, socket or directory
	// where it needs a regular file.
	errNotRegular = errors.New("not a regular file")
	// errBusy: a bounded resource (processes, watches, requests) is full.
	errBusy = errors.New("busy")
	// errStdinClosed: stdin was not kept open, or was closed.
	errStdinClosed = errors.New("stdin is not open")
	// errInvalid: a call that cannot apply to its target (not a PTY,
	// the root itself, ...).
	errInvalid = errors.New("invalid")
)

// errorCode classifies an error for the host.
func errorCode(err error) agentproto.ErrorCode {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR), errors.Is(err, errNoUser), errors.Is(err, errNoProcess):
		return agentproto.CodeNotFound
	case errors.Is(err, fs.ErrExist), errors.Is(err, syscall.ENOTEMPTY):
		return agentproto.CodeExists
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EXDEV), errors.Is(err, syscall.ELOOP):
		return agentproto.CodePermission
	case errors.Is(err, errTooLarge), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EFBIG):
		return agentproto.CodeTooLarge
	case errors.Is(err, errBusy):
		return agentproto.CodeBusy
	case errors.Is(err, errNotRegular), errors.Is(err, errInvalid), errors.Is(err, errStdinClosed), errors.Is(err, syscall.EISDIR), errors.Is(err, agentproto.ErrMalformed):
		return agentproto.CodeInvalid
	}
	return ""
}
