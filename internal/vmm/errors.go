package vmm

import "errors"

// Sentinel errors shared by all drivers.
var (
	ErrInvalidState  = errors.New("vmm: operation not allowed in this state")
	ErrUnsupported   = errors.New("vmm: not supported by this driver")
	ErrInvalidConfig = errors.New("vmm: invalid configuration")
	ErrExited        = errors.New("vmm: the VMM process exited")
	ErrUnavailable   = errors.New("vmm: driver not usable on this host")
	ErrIncompatible  = errors.New("vmm: snapshot does not match this driver or host")
	// ErrInUse: a machine's RunDir belongs to a VMM that is still running.
	ErrInUse = errors.New("vmm: run directory in use by a running VMM")
	// ErrUnsafe: a file or directory the driver must keep private is
	// owned or writable by someone else, or is a symlink.
	ErrUnsafe = errors.New("vmm: unsafe file or directory")
)
