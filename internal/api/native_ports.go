// This file holds the native API's way into a sandbox's ports:
// /v1/sandboxes/{id}/ports/{port}/..., an HTTP and WebSocket reverse proxy
// to a server listening inside the sandbox.

package api

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// handlePort proxies a request to a TCP port inside the request tenant's
// sandbox: the path after /ports/{port} and the query go to the guest
// unchanged, the API key does not (network.PortProxy drops it). A
// sandbox of another tenant does not exist for the caller (404). A
// hibernated sandbox is resumed first.
func (s *Server) handlePort(w http.ResponseWriter, r *http.Request) {
	id, ps := r.PathValue("id"), r.PathValue("port")
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 || strconv.Itoa(port) != ps {
		s.writeError(w, r, fmt.Errorf("%w: port %q: want 1-65535", sandbox.ErrBadRequest, ps))
		return
	}
	// Ask for the sandbox first: another tenant's, or none, is a 404 from
	// the API, never a proxy error that would tell them apart.
	if _, err := s.sbx.Get(r.Context(), tenantOf(r), id); err != nil {
		s.writeError(w, r, err)
		return
	}
	if r.Header.Get("Upgrade") != "" {
		// A WebSocket lives as long as its ends want: no write deadline
		// from the middleware.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	}
	prefix := "/v1/sandboxes/" + id + "/ports/" + ps
	proxy := network.PortProxy(s.sbx.PortDialer(tenantOf(r), id), port, network.PortProxyConfig{})
	http.StripPrefix(prefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/") {
			r.URL.Path = "/" + r.URL.Path
		}
		proxy.ServeHTTP(w, r)
	})).ServeHTTP(w, r)
}
