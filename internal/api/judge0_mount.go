package api

import (
	"github.com/firesandbox/firesandbox/internal/api/judge0"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
)

// openJudge0 serves Judge0's API over the state database's queue, with
// the server's VM gate. Its requests are authenticated by the middleware
// (X-Auth-Token is a key like any other) and act for its tenant.
func openJudge0(s *Server) (*judge0.Handler, error) {
	subs, err := state.OpenSubmissions(s.svc.DB)
	if err != nil {
		return nil, err
	}
	sc := s.svc.Config()
	return judge0.New(judge0.Config{Workers: sc.MaxVMs, WaitTimeout: sc.QueueWait + 2*s.cfg.MaxTimeout}, judge0.Deps{
		Runner: s.mgr, Catalog: s.mgr.Catalog(), Store: subs, Gate: s.lim, Logger: s.log, Authenticate: judge0Tenant,
		Installed: func(e *image.Entry) bool { _, err := s.installed(e.Name, e.Version); return err == nil },
		Network:   judge0Network(s),
	})
}

// judge0Network is what enable_network gets where VMs have a network: the
// public internet (private, link-local and the host's own addresses stay
// denied, as for every policy). Without one, enable_network is refused.
func judge0Network(s *Server) func(tenant string, req *sandbox.RunRequest) error {
	if !s.mgr.HasNetwork() {
		return nil
	}
	return func(_ string, req *sandbox.RunRequest) error {
		req.Network = &network.Policy{AllowOut: []string{"0.0.0.0/0"}}
		return nil
	}
}
