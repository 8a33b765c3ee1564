// This file holds what a sandbox may be: the server's caps on one
// sandbox's shape, and the tenant's quotas over all of its sandboxes.

package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/firesandbox/firesandbox/internal/api/judge0"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
	"github.com/firesandbox/firesandbox/internal/tenant"
)

// errShape means a sandbox asked for a shape the server does not offer.
var errShape = errors.New("shape not allowed")

// ShapeCaps bound each sandbox's shape. Every (vCPUs, memory) pair has
// its own snapshot per language, so Shapes is a short list: one client
// cannot make the server build hundreds of them.
type ShapeCaps struct {
	// MaxVCPUs, MaxMemoryMiB and MaxDiskMiB cap one sandbox; defaults 4,
	// 8192 and 16384.
	MaxVCPUs     int `json:"max_vcpus" toml:"max_vcpus"`
	MaxMemoryMiB int `json:"max_memory_mib" toml:"max_memory_mib"`
	MaxDiskMiB   int `json:"max_disk_mib" toml:"max_disk_mib"`
	// Shapes are the allowed VCPUSxMEMORY_MIB pairs ("2x1024"); the
	// server's default shape is always allowed. Default: 1x512, 1x1024,
	// 2x1024, 2x2048, 4x4096, those within the caps.
	Shapes []string `json:"shapes" toml:"shapes"`
}

// DefaultShapes are the shapes offered unless configured.
var DefaultShapes = []string{"1x512", "1x1024", "2x1024", "2x2048", "4x4096"}

func (c *ShapeCaps) setDefaults() {
	if c.MaxVCPUs == 0 {
		c.MaxVCPUs = 4
	}
	if c.MaxMemoryMiB == 0 {
		c.MaxMemoryMiB = 8192
	}
	if c.MaxDiskMiB == 0 {
		c.MaxDiskMiB = 16384
	}
	if len(c.Shapes) == 0 {
		c.Shapes = DefaultShapes
	}
}

// Validate checks the caps and the shapes' syntax.
func (c *ShapeCaps) Validate() error {
	if c.MaxVCPUs < 0 || c.MaxMemoryMiB < 0 || c.MaxDiskMiB < 0 {
		return fmt.Errorf("%w: shape caps must not be negative", sandbox.ErrBadRequest)
	}
	if len(c.Shapes) > 32 {
		return fmt.Errorf("%w: %d shapes: at most 32", sandbox.ErrBadRequest, len(c.Shapes))
	}
	for _, s := range c.Shapes {
		if _, err := ParseShape(s); err != nil {
			return err
		}
	}
	return nil
}

// ParseShape parses VCPUSxMEMORY_MIB ("2x1024").
func ParseShape(s string) (sandbox.Shape, error) {
	v, m, ok := strings.Cut(s, "x")
	vc, err1 := strconv.Atoi(v)
	mem, err2 := strconv.Atoi(m)
	sh := sandbox.Shape{VCPUs: vc, MemoryMiB: mem}
	if !ok || err1 != nil || err2 != nil || vc < 1 || mem < 1 {
		return sh, fmt.Errorf("%w: shape %q: want VCPUSxMEMORY_MIB, like 2x1024", sandbox.ErrBadRequest, s)
	}
	return sh, sh.Validate()
}

// checkShape refuses a sandbox record's shape beyond the caps or not in
// the list.
func (s *Server) checkShape(sb state.Sandbox) error {
	c := s.cfg.Caps
	switch {
	case sb.VCPUs > c.MaxVCPUs:
		return fmt.Errorf("%w: %d vCPUs: this server allows at most %d per sandbox", errShape, sb.VCPUs, c.MaxVCPUs)
	case sb.MemoryMiB > c.MaxMemoryMiB:
		return fmt.Errorf("%w: %d MiB of memory: this server allows at most %d per sandbox", errShape, sb.MemoryMiB, c.MaxMemoryMiB)
	case sb.DiskMiB > c.MaxDiskMiB:
		return fmt.Errorf("%w: a %d MiB disk: this server allows at most %d per sandbox", errShape, sb.DiskMiB, c.MaxDiskMiB)
	}
	def := s.mgr.Config()
	if sb.VCPUs == def.VCPUs && sb.MemoryMiB == def.MemoryMiB {
		return nil
	}
	var offered []string
	for _, name := range append([]string{fmt.Sprintf("%dx%d", def.VCPUs, def.MemoryMiB)}, c.Shapes...) {
		sh, _ := ParseShape(name) // validated with the config
		if sh.VCPUs > c.MaxVCPUs || sh.MemoryMiB > c.MaxMemoryMiB || slices.Contains(offered, name) {
			continue
		}
		if sh.VCPUs == sb.VCPUs && sh.MemoryMiB == sb.MemoryMiB {
			return nil
		}
		offered = append(offered, name)
	}
	return fmt.Errorf("%w: %d vCPUs with %d MiB is not a shape this server offers; offered (vCPUs x MiB): %s",
		errShape, sb.VCPUs, sb.MemoryMiB, strings.Join(offered, ", "))
}

// admitSandbox is the sandboxes' admission policy: the shape caps at
// create, then the tenant's quotas.
func (s *Server) admitSandbox(ctx context.Context, op string, sb state.Sandbox) (func(), error) {
	if op == string(tenant.OpCreate) {
		if err := s.checkShape(sb); err != nil {
			return nil, err
		}
	}
	return s.quotas.Admit(ctx, sb.Tenant, tenant.Request{Op: tenant.Op(op), ID: sb.ID, MemoryMiB: sb.MemoryMiB, DiskMiB: sb.DiskMiB})
}

// usageOf lists a tenant's sandboxes for its quotas.
func (s *Server) usageOf(ctx context.Context, t string) ([]tenant.Item, error) {
	list, err := s.sbx.List(ctx, t, sandbox.ListFilter{})
	if err != nil {
		return nil, err
	}
	items := make([]tenant.Item, 0, len(list))
	for _, sb := range list {
		live := false
		switch sb.State {
		case state.Creating, state.Running, state.Resuming, state.Hibernating, state.Forking:
			live = true
		}
		items = append(items, tenant.Item{ID: sb.ID, Hibernated: sb.State == state.Hibernated, Live: live,
			MemoryMiB: sb.MemoryMiB, DiskMiB: sb.DiskMiB})
	}
	return items, nil
}

// judge0Tenant is Judge0's Authenticate: the tenant the middleware found
// (X-Auth-Token is one of the headers it reads a key from). Judge0 names
// the default tenant "default", as its submissions did before tenants.
func judge0Tenant(r *http.Request) (string, error) {
	t, ok := tenant.FromContext(r.Context())
	if !ok {
		return "", judge0.ErrUnauthenticated
	}
	return tenant.Display(t), nil
}
