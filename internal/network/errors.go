package network

import "errors"

// Sentinel errors. Callers test with errors.Is; the API maps ErrInvalidPolicy
// to 400 and shows the wrapped message, which names the bad entry.
var (
	// ErrInvalidPolicy: a policy entry is not an IP, a CIDR, a domain or
	// a *.domain, or a list is too long.
	ErrInvalidPolicy = errors.New("network: invalid policy")
	// ErrInvalidConfig: a Host configuration that cannot work.
	ErrInvalidConfig = errors.New("network: invalid configuration")
	// ErrUnavailable: this host cannot give VMs a network (no namespaces,
	// no tap, no nftables); Diagnose says why.
	ErrUnavailable = errors.New("network: not available on this host")
	// ErrClosed: the Host or VM network was closed.
	ErrClosed = errors.New("network: closed")
	// ErrDenied: the policy refuses this destination.
	ErrDenied = errors.New("network: denied by policy")
	// ErrExhausted: every address slot for VM networks is in use.
	ErrExhausted = errors.New("network: no free address slot")
)
