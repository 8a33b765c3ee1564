package agentproto

import (
	"bytes"
	"errors"
	"io"
)

// Sentinel errors of the protocol.
var (
	ErrBadMagic  = errors.New("agentproto: not a firesandbox frame")
	ErrVersion   = errors.New("agentproto: protocol version mismatch")
	ErrTooLarge  = errors.New("agentproto: frame too large")
	ErrMalformed = errors.New("agentproto: malformed message")
	ErrClosed    = errors.New("agentproto: channel closed")
	// ErrBadBoot marks a boot contract (fs.* kernel arguments) that must
	// not be written or acted on.
	ErrBadBoot = errors.New("agentproto: bad boot arguments")
	// ErrDetached is what Process.Wait returns after Detach.
	ErrDetached = errors.New("agentproto: detached from the process")
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
