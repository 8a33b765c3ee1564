// This file holds the native API's network policies: the "network" field
// of a sandbox (or a run) and /v1/sandboxes/{id}/network.

package api

import (
	"fmt"
	"net/http"

	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
)

// NetworkIn is a network policy as clients write it: each entry is an IP,
// a CIDR, a domain ("example.com", that name) or a wildcard
// ("*.example.com", the names below it). Deny wins. Link-local (cloud
// metadata), private and loopback ranges and the host's own addresses
// stay denied unless an entry names them.
type NetworkIn struct {
	AllowOut []string `json:"allow_out"`
	DenyOut  []string `json:"deny_out"`
}

// policy checks and converts a policy; a bad entry is a 400 naming it.
func (n *NetworkIn) policy() (*network.Policy, error) {
	if n == nil {
		return nil, nil
	}
	p := &network.Policy{AllowOut: n.AllowOut, DenyOut: n.DenyOut}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// NetworkOut is a sandbox's policy in canonical form (entries
// lower-cased, deduplicated and sorted), as it is enforced.
type NetworkOut struct {
	ID       string   `json:"id"`
	AllowOut []string `json:"allow_out"`
	DenyOut  []string `json:"deny_out"`
}

func networkOut(sb state.Sandbox) (NetworkOut, error) {
	p, err := sandbox.PolicyOf(sb)
	if err != nil {
		return NetworkOut{}, err
	}
	out := NetworkOut{ID: sb.ID, AllowOut: p.AllowOut, DenyOut: p.DenyOut}
	if out.AllowOut == nil {
		out.AllowOut = []string{}
	}
	if out.DenyOut == nil {
		out.DenyOut = []string{}
	}
	return out, nil
}

// handleGetNetwork is GET /v1/sandboxes/{id}/network.
func (s *Server) handleGetNetwork(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sbx.Get(r.Context(), tenantOf(r), r.PathValue("id"))
	if err == nil && (sb.State == state.Deleted || sb.State == state.Deleting) {
		err = fmt.Errorf("%w: sandbox %s was deleted", sandbox.ErrSandboxDeleted, sb.ID)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out, err := networkOut(sb)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// handleSetNetwork is PUT (or POST) /v1/sandboxes/{id}/network: the whole
// policy is replaced, and a running sandbox's takes effect at once.
func (s *Server) handleSetNetwork(w http.ResponseWriter, r *http.Request) {
	var in NetworkIn
	if err := decodeJSON(r, &in, true /* strict */); err != nil {
		s.writeError(w, r, err)
		return
	}
	p, err := in.policy()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sb, err := s.sbx.SetNetwork(r.Context(), tenantOf(r), r.PathValue("id"), *p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out, err := networkOut(sb)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}
