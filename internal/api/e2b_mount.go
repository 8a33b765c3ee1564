package api

import (
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"github.com/firesandbox/firesandbox/internal/api/e2b"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/state"
)

// openE2B builds the E2B adapter over the server's sandboxes: tenants
// and error statuses are this package's, the tokens' secret lives beside
// the state database.
func openE2B(s *Server) (*e2b.Handler, error) {
	secret := s.e2bSecret
	if secret == nil {
		var err error
		if secret, err = e2b.LoadSecret(filepath.Join(s.svc.Config().StateDir, "e2b-token.key")); err != nil {
			return nil, err
		}
	}
	return e2b.New(e2b.Config{}, e2b.Deps{
		Sandboxes: s.sbx, DB: s.svc.DB, Catalog: s.mgr.Catalog(),
		Installed: func(e *image.Entry) bool { _, err := s.installed(e.Name, e.Version); return err == nil },
		Tenant:    tenantOf,
		Status:    func(err error) int { st, _ := statusOf(err); return st },
		Secret:    secret,
		// A port request already names its sandbox, found by its token.
		Ports: func(_ *http.Request, sb state.Sandbox, _ int) (network.PortDialer, error) {
			return s.sbx.PortDialer(sb.Tenant, sb.ID), nil
		},
		Logger: s.log.With("component", "e2b"),
	})
}

// e2bFront sends E2B data-plane requests (those naming a sandbox in
// E2b-Sandbox-Id, or by a PORT-ID host) to the adapter, and everything
// else to next. The data plane is authenticated by each sandbox's own
// token rather than an API key, so it does not pass the API's
// authentication; it gets the rest of the middleware's care here.
func (s *Server) e2bFront(next http.Handler) http.Handler {
	dp := s.e2b.DataPlane()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !e2b.IsDataPlane(r) {
			next.ServeHTTP(w, r)
			return
		}
		s.inflight.Add(1)
		defer s.inflight.Done()
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("e2b handler panicked", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(stack()))
				if !sw.wrote {
					s.writeError(sw, r, fmt.Errorf("internal error: %v", p))
				}
			}
			s.met.observeHTTP("e2b data plane", sw.code(), time.Since(start))
		}()
		if r.Body != nil {
			// Streams extend no deadline: a body must arrive in time, and
			// a response may stream for as long as its call's own limit.
			rc := http.NewResponseController(sw)
			_ = rc.SetReadDeadline(time.Now().Add(5 * time.Minute))
			r.Body = http.MaxBytesReader(sw, r.Body, s.cfg.MaxBody)
		}
		dp.ServeHTTP(sw, r)
	})
}
