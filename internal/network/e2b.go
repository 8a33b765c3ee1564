package network

import (
	"encoding/json"
	"fmt"
	"net/netip"
)

// E2BNetwork is the "network" object of E2B's NewSandbox (SandboxNetworkConfig
// in e2b-dev/infra spec/openapi.yml).
type E2BNetwork struct {
	// AllowOut holds IPs, CIDRs and domains; in E2B an allowed entry wins
	// over a denied one.
	AllowOut []string `json:"allowOut,omitempty"`
	// DenyOut holds IPs and CIDRs only (E2B refuses domains here).
	DenyOut []string `json:"denyOut,omitempty"`
	// AllowPublicTraffic is about reaching the sandbox's ports without
	// authentication: ingress, not part of the egress policy. firesandbox's
	// port proxy always wants the owner's key.
	AllowPublicTraffic *bool `json:"allowPublicTraffic,omitempty"`
	// MaskRequestHost and Rules (request rewriting) are not supported.
	MaskRequestHost *string                    `json:"maskRequestHost,omitempty"`
	Rules           map[string]json.RawMessage `json:"rules,omitempty"`
}

// internetPrefix is what E2B's allow_internet_access means: any public
// IPv4 address (the special ranges stay denied, as for every policy).
var internetPrefix = netip.MustParsePrefix("0.0.0.0/0")

// FromE2B maps E2B's allow_internet_access and network fields onto a
// Policy with the same meaning. E2B lets allowOut win over denyOut, and
// firesandbox lets deny win, so the mapping computes E2B's result and
// writes it as allow entries only:
//
//	allowed = allowOut ∪ (internet ? everything − denyOut : ∅)
//
// allowInternetAccess nil means true, E2B's default. A domain in denyOut,
// request rewriting rules and maskRequestHost are refused with
// ErrInvalidPolicy, like any bad entry.
func FromE2B(allowInternetAccess *bool, n *E2BNetwork) (Policy, error) {
	internet := allowInternetAccess == nil || *allowInternetAccess
	var nw E2BNetwork
	if n != nil {
		nw = *n
	}
	if len(nw.Rules) > 0 {
		return Policy{}, fmt.Errorf("%w: network.rules (request transforms) is not supported", ErrInvalidPolicy)
	}
	if nw.MaskRequestHost != nil && *nw.MaskRequestHost != "" {
		return Policy{}, fmt.Errorf("%w: network.maskRequestHost is not supported", ErrInvalidPolicy)
	}
	if len(nw.AllowOut) > MaxEntries || len(nw.DenyOut) > MaxEntries {
		return Policy{}, fmt.Errorf("%w: allowOut and denyOut take at most %d entries each", ErrInvalidPolicy, MaxEntries)
	}
	var deny []netip.Prefix
	for i, s := range nw.DenyOut {
		e, err := parseEntry(s)
		if err != nil {
			return Policy{}, fmt.Errorf("%w: network.denyOut[%d]: %v", ErrInvalidPolicy, i, err)
		}
		if e.isName {
			return Policy{}, fmt.Errorf("%w: network.denyOut[%d]: %q: denyOut takes IPs and CIDRs only, not domains", ErrInvalidPolicy, i, s)
		}
		deny = append(deny, e.prefix)
	}
	var p Policy
	for i, s := range nw.AllowOut {
		if _, err := parseEntry(s); err != nil {
			return Policy{}, fmt.Errorf("%w: network.allowOut[%d]: %v", ErrInvalidPolicy, i, err)
		}
		p.AllowOut = append(p.AllowOut, s)
	}
	if internet {
		// Pieces of the complement that lie inside a special range are
		// left out: "the internet" never opens them, and as allow entries
		// they would.
		for _, piece := range subtract([]netip.Prefix{internetPrefix}, deny) {
			if !insideAny(piece, specialRanges) {
				p.AllowOut = append(p.AllowOut, prefixString(piece))
			}
		}
	}
	if _, err := p.Compile(); err != nil {
		return Policy{}, err
	}
	return p, nil
}
