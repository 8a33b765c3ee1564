package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/state"
)

// ServiceConfig configures a Service. Zero fields take the defaults noted.
type ServiceConfig struct {
	// StateDir holds state.db and sandboxes/; default the Manager's data
	// directory.
	StateDir string `json:"state_dir" toml:"state_dir"`
	// MaxVMs caps the work running at once: one-shot runs and execs in
	// sandboxes, each holding a slot while it runs; default the number of
	// CPUs. Live sandboxes hold no slot: they are admitted by memory.
	MaxVMs int `json:"max_vms" toml:"max_vms"`
	// MemoryBudgetMiB is what live sandboxes' VMs may take together
	// (guest memory plus the VMM's overhead each); default the host's RAM
	// less an eighth (at least 1 GiB) for the host and room for a VM per
	// work slot and per pooled VM. Past it, a create or resume fails with
	// ErrMemoryBudget.
	MemoryBudgetMiB int64 `json:"memory_budget_mib" toml:"memory_budget_mib"`
	// SandboxTimeout is a sandbox's lifetime when its create does not say
	// (default 5m); MaxSandboxTimeout bounds what one may ask for
	// (default 24h).
	SandboxTimeout    time.Duration `json:"sandbox_timeout" toml:"sandbox_timeout"`
	MaxSandboxTimeout time.Duration `json:"max_sandbox_timeout" toml:"max_sandbox_timeout"`
	// MaxForks bounds the children of one fork; default 16.
	MaxForks int `json:"max_forks" toml:"max_forks"`
	// Queue is how many requests may wait for a VM; default 4*MaxVMs.
	Queue int `json:"queue" toml:"queue"`
	// QueueWait is how long one waits before ErrQueueTimeout; default 30s.
	QueueWait time.Duration `json:"queue_wait" toml:"queue_wait"`
	// IdleHibernate hibernates sandboxes unused this long by default; zero
	// never (sandboxes may still set their own).
	IdleHibernate time.Duration `json:"idle_hibernate" toml:"idle_hibernate"`
	// HibernatedTTL deletes sandboxes hibernated for this long; zero
	// keeps them until deleted.
	HibernatedTTL time.Duration `json:"hibernated_ttl" toml:"hibernated_ttl"`
	// Pools are warm pool sizes by language: "N" or "MIN..MAX".
	Pools map[string]PoolRange `json:"pools" toml:"pools"`
	// Directory, if set, shares the sandboxes with other hosts (see
	// SandboxesConfig.Directory).
	Directory Directory `json:"-" toml:"-"`
	// Network gives VMs network devices (see network.go); nil: none.
	Network *NetworkConfig `json:"network,omitempty" toml:"network"`
}

func (c *ServiceConfig) setDefaults(mgr *Manager) {
	if c.StateDir == "" {
		c.StateDir = mgr.Config().DataDir
	}
	if c.MaxVMs == 0 {
		c.MaxVMs = runtime.NumCPU()
	}
	if c.Queue == 0 {
		c.Queue = 4 * c.MaxVMs
	}
	if c.QueueWait == 0 {
		c.QueueWait = 30 * time.Second
	}
	if c.MemoryBudgetMiB == 0 {
		pooled := 0
		for _, r := range c.Pools {
			pooled += r.Max
		}
		c.MemoryBudgetMiB = defaultMemoryBudget(hostMemoryMiB(), c.MaxVMs, pooled, mgr.Config().MemoryMiB)
	}
}

// Validate checks a ServiceConfig.
func (c *ServiceConfig) Validate() error {
	if c.MaxVMs < 0 || c.Queue < 0 || c.QueueWait < 0 || c.IdleHibernate < 0 || c.HibernatedTTL < 0 || c.MemoryBudgetMiB < 0 ||
		c.SandboxTimeout < 0 || c.MaxSandboxTimeout < 0 || c.MaxForks < 0 {
		return fmt.Errorf("%w: limits must not be negative", ErrBadRequest)
	}
	if c.MaxSandboxTimeout > 0 && c.SandboxTimeout > c.MaxSandboxTimeout {
		return fmt.Errorf("%w: sandbox timeout %s is above the maximum %s", ErrBadRequest, c.SandboxTimeout, c.MaxSandboxTimeout)
	}
	if c.MaxForks > 256 {
		return fmt.Errorf("%w: max forks %d: at most 256", ErrBadRequest, c.MaxForks)
	}
	for lang, r := range c.Pools {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("pool %s: %w", lang, err)
		}
	}
	if c.Network != nil {
		return c.Network.Validate()
	}
	return nil
}

// Service is what every front end shares (the HTTP APIs, the CLI's
// sandbox commands): the Manager, the state database, the sandboxes, the
// work limiter, the memory budget and the warm pools. Open one per data
// directory and process.
type Service struct {
	Manager   *Manager
	DB        *state.DB
	Sandboxes *Sandboxes
	Limiter   *Limiter
	Memory    *MemoryBudget
	cfg       ServiceConfig
	cancel    context.CancelFunc

	// Network makes the VMs' networks; nil where VMs get none.
	Network *network.Host
}

// OpenService opens the state database (reconciling what a previous
// process left), the sandboxes and the warm pools. Close undoes it; the
// Manager stays the caller's, but its pools are stopped by Close.
func OpenService(mgr *Manager, cfg ServiceConfig, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults(mgr)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("open service: %w", err)
	}
	nh, err := openNetwork(cfg.Network, log.With("component", "network"))
	if err != nil {
		return nil, err
	}
	mgr.UseNetwork(nh)
	db, err := state.Open(filepath.Join(cfg.StateDir, "state.db"))
	if err != nil {
		closeNetwork(mgr, nh)
		return nil, err
	}
	svc := &Service{Manager: mgr, DB: db, cfg: cfg, Limiter: NewLimiter(cfg.MaxVMs, cfg.Queue, cfg.QueueWait),
		Memory: NewMemoryBudget(cfg.MemoryBudgetMiB), Network: nh}
	svc.Sandboxes, err = OpenSandboxes(mgr, db, SandboxesConfig{
		Dir: filepath.Join(cfg.StateDir, "sandboxes"), IdleTimeout: cfg.IdleHibernate, HibernatedTTL: cfg.HibernatedTTL,
		Timeout: cfg.SandboxTimeout, MaxTimeout: cfg.MaxSandboxTimeout, MaxForks: cfg.MaxForks,
		Directory: cfg.Directory,
	}, svc.Limiter, svc.Memory, log.With("component", "sandboxes"))
	if err != nil {
		db.Close()
		closeNetwork(mgr, nh)
		return nil, err
	}
	base, cancel := context.WithCancel(context.Background())
	svc.cancel = cancel
	for lang, n := range cfg.Pools {
		if err := mgr.StartPool(base, lang, n, true /* warm */); err != nil {
			return nil, errors.Join(fmt.Errorf("start pool %s: %w", lang, err), svc.Close(context.Background()))
		}
	}
	return svc, nil
}

// Config returns the effective configuration.
func (s *Service) Config() ServiceConfig { return s.cfg }

// Close hibernates the running sandboxes, stops the pools and closes the
// database.
func (s *Service) Close(ctx context.Context) error {
	var errs []error
	if err := s.Sandboxes.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("hibernate sandboxes: %w", err))
	}
	s.cancel()
	if err := s.Manager.Close(); err != nil {
		errs = append(errs, fmt.Errorf("stop pools: %w", err))
	}
	if err := s.DB.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close state: %w", err))
	}
	if err := closeNetwork(s.Manager, s.Network); err != nil {
		errs = append(errs, fmt.Errorf("close network: %w", err))
	}
	return errors.Join(errs...)
}
