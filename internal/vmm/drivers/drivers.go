package drivers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/firecracker"
	"github.com/firesandbox/firesandbox/internal/vmm/kvm"
	"github.com/firesandbox/firesandbox/internal/vmm/qemu"
)

// AccelEnv, when set to "kvm" or "tcg", overrides the configured QEMU
// accelerator (tests and CI use it).
const AccelEnv = kvm.AccelEnv

// AccelChoice is the cached answer of a KVM probe (see kvm.AccelChoice).
type AccelChoice = kvm.AccelChoice

// ReadAccelChoice reads the answer cached in dir (the data dir).
func ReadAccelChoice(dir string) (AccelChoice, error) { return kvm.ReadAccelChoice(dir) }

// ProbeTimeout bounds a KVM probe: a real KVM guest answers in well under
// a second and TCG takes 3-4 s, so a probe that needs longer than this
// means KVM is not doing its job.
const ProbeTimeout = 12 * time.Second

// Probe boots a guest under a driver, for the KVM check. Boot returns nil
// once the guest's agent answered (and stops the VM again); it must honour
// ctx, which ProbeTimeout bounds. Key names what Boot boots, usually the
// guest kernel's id: a cached answer is reused only for the same key, host
// kernel, QEMU version and confinement.
type Probe struct {
	Key  string
	Boot func(ctx context.Context, d vmm.Driver) error
}

// Chooser picks and builds the driver a Config asks for, once.
type Chooser struct {
	cfg      Config
	log      *slog.Logger
	cacheDir string
	fixed    vmm.Driver
	h        hooks

	mu       sync.Mutex
	driver   vmm.Driver // chosen; never changes once set
	accel    AccelChoice
	inflight *call
}

type call struct {
	done chan struct{}
	d    vmm.Driver
	err  error
}

// hooks are the outside world, replaceable in tests.
type hooks struct {
	kvmOpen        func() error
	kvmGroup       func() bool
	newQEMU        func(qemu.Config, *slog.Logger) (vmm.Driver, error)
	newFirecracker func(firecracker.Config, *slog.Logger) (vmm.Driver, error)
	diagnoseFC     func(context.Context, firecracker.Config) vmm.Diagnosis
	hostKernel     func() string
}

func defaultHooks() hooks {
	return hooks{
		kvmOpen:  kvm.Open,
		kvmGroup: func() bool { _, ok := kvm.Group(); return ok },
		newQEMU: func(c qemu.Config, l *slog.Logger) (vmm.Driver, error) {
			return qemu.New(c, qemu.WithLogger(l))
		},
		newFirecracker: func(c firecracker.Config, l *slog.Logger) (vmm.Driver, error) {
			return firecracker.New(c, firecracker.WithLogger(l))
		},
		diagnoseFC: firecracker.Diagnose,
		hostKernel: kvm.HostKernel,
	}
}

// Option configures a Chooser.
type Option func(*Chooser)

// WithLogger sets the logger handed to the drivers (default: discard).
func WithLogger(l *slog.Logger) Option { return func(c *Chooser) { c.log = l } }

// WithAccelCache keeps the KVM probe's answer in dir/accel.json (the data
// directory), so later processes do not probe again.
func WithAccelCache(dir string) Option { return func(c *Chooser) { c.cacheDir = dir } }

// WithDriver makes Driver return d, whatever the configuration says (for
// tests with a fake driver).
func WithDriver(d vmm.Driver) Option { return func(c *Chooser) { c.fixed = d } }

// New validates cfg and returns a Chooser. It starts nothing: the choice
// is made by the first Driver call.
func New(cfg Config, opts ...Option) (*Chooser, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Chooser{cfg: cfg.withDefaults(), log: slog.New(slog.DiscardHandler), h: defaultHooks()}
	for _, o := range opts {
		o(c)
	}
	if c.fixed != nil {
		c.driver = c.fixed
	}
	return c, nil
}

// Close closes the chosen driver, if it holds anything of its own (QEMU's
// processes started ahead). Machines it made are their owners' to stop.
func (c *Chooser) Close() error {
	c.mu.Lock()
	d := c.driver
	c.mu.Unlock()
	if cl, ok := d.(io.Closer); ok && d != c.fixed {
		return cl.Close()
	}
	return nil
}

// Config returns the configuration, defaults filled in.
func (c *Chooser) Config() Config { return c.cfg }

// Driver returns the driver, choosing it on the first call: Firecracker or
// QEMU as configured, and for QEMU the accelerator, which may take a KVM
// probe boot (through probe) unless configured or cached. Concurrent
// callers share one decision; a caller whose ctx ends stops waiting, but
// the decision goes on for the others. A failed decision is not kept: the
// next call tries again.
func (c *Chooser) Driver(ctx context.Context, probe Probe) (vmm.Driver, error) {
	c.mu.Lock()
	if c.driver != nil {
		d := c.driver
		c.mu.Unlock()
		return d, nil
	}
	cl := c.inflight
	if cl == nil {
		cl = &call{done: make(chan struct{})}
		c.inflight = cl
		go c.decide(cl, probe)
	}
	c.mu.Unlock()
	select {
	case <-cl.done:
		return cl.d, cl.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// decide runs detached from any one caller: it is bounded by the probe's
// timeout, not by the context of whoever came first.
func (c *Chooser) decide(cl *call, probe Probe) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*ProbeTimeout+30*time.Second)
	defer cancel()
	d, choice, err := c.choose(ctx, probe)
	c.mu.Lock()
	if err == nil {
		c.driver, c.accel = d, choice
	}
	c.inflight = nil
	c.mu.Unlock()
	cl.d, cl.err = d, err
	close(cl.done)
}

func (c *Chooser) choose(ctx context.Context, probe Probe) (vmm.Driver, AccelChoice, error) {
	name := c.cfg.Driver
	if name != QEMU {
		dg := c.h.diagnoseFC(ctx, c.cfg.Firecracker)
		switch {
		case dg.Usable:
			name = Firecracker
		case name == Firecracker:
			return nil, AccelChoice{}, fmt.Errorf("%w: firecracker: %s (see `firesandbox doctor`)", vmm.ErrUnavailable, strings.Join(dg.Problems, "; "))
		default:
			name = QEMU
		}
	}
	if name == Firecracker {
		d, err := c.h.newFirecracker(c.cfg.Firecracker, c.log)
		if err != nil {
			return nil, AccelChoice{}, err
		}
		c.log.Info("vmm driver chosen", "driver", d.Name(), "version", d.Version(), "confinement", d.Capabilities().Confinement)
		return d, AccelChoice{Accel: vmm.AccelKVM, Reason: "firecracker"}, nil
	}
	choice, err := c.qemuAccel(ctx, probe)
	if err != nil {
		return nil, choice, err
	}
	qc := c.cfg.QEMU
	qc.Accel = choice.Accel
	d, err := c.h.newQEMU(qc, c.log)
	if err != nil {
		return nil, choice, err
	}
	c.log.Info("vmm driver chosen", "driver", d.Name(), "version", d.Version(), "accel", choice.Accel, "why", choice.Reason, "confinement", d.Capabilities().Confinement)
	return d, choice, nil
}

// qemuAccel decides between KVM and TCG: the environment, then the
// configuration, then /dev/kvm, then the cache, and last a probe boot.
func (c *Chooser) qemuAccel(ctx context.Context, probe Probe) (AccelChoice, error) {
	now := time.Now().UTC()
	if v := os.Getenv(AccelEnv); v != "" {
		if v != vmm.AccelKVM && v != vmm.AccelTCG {
			return AccelChoice{}, fmt.Errorf("%w: %s=%q: want kvm or tcg", vmm.ErrInvalidConfig, AccelEnv, v)
		}
		return AccelChoice{Accel: v, Reason: AccelEnv}, nil
	}
	if c.cfg.Accel != Auto {
		return AccelChoice{Accel: c.cfg.Accel, Reason: "configured"}, nil
	}
	if err := c.h.kvmOpen(); err != nil {
		return AccelChoice{Accel: vmm.AccelTCG, Reason: err.Error(), Probed: now}, nil
	}
	if !c.cfg.QEMU.Unconfined && !c.h.kvmGroup() {
		return AccelChoice{Accel: vmm.AccelTCG, Reason: kvm.Device + " grants no group read-write access, so a confined QEMU (its own uid) cannot open it; make it 0660 root:kvm to use KVM", Probed: now}, nil
	}
	if probe.Boot == nil {
		return AccelChoice{Accel: vmm.AccelKVM, Reason: "/dev/kvm opens (not probed: no probe given)"}, nil
	}
	kc := c.cfg.QEMU
	kc.Accel = vmm.AccelKVM
	kd, err := c.h.newQEMU(kc, c.log)
	if err != nil {
		return AccelChoice{}, err
	}
	key := c.cacheKey(kd.Version(), probe.Key)
	if cached, err := ReadAccelChoice(c.cacheDir); err == nil && cached.Key == key {
		cached.Reason += " (cached)"
		return cached, nil
	}
	choice := AccelChoice{Key: key, Accel: vmm.AccelKVM, Reason: "a probe VM booted under KVM", Probed: now}
	pctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	err = probe.Boot(pctx, kd)
	cancel()
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(ctx.Err(), context.Canceled) {
			return AccelChoice{}, ctx.Err()
		}
		first, _, _ := strings.Cut(err.Error(), "\n")
		choice.Accel, choice.Reason = vmm.AccelTCG, "KVM probe failed: "+first
	}
	c.log.Info("kvm probe", "accel", choice.Accel, "why", choice.Reason)
	if c.cacheDir != "" {
		if err := kvm.WriteAccelChoice(c.cacheDir, choice); err != nil {
			c.log.Warn("cannot cache the KVM probe's answer", "err", err)
		}
	}
	return choice, nil
}

func (c *Chooser) cacheKey(qemuVersion, probeKey string) string {
	conf := "confined"
	if c.cfg.QEMU.Unconfined {
		conf = "unconfined"
	}
	return strings.Join([]string{c.h.hostKernel(), qemuVersion, conf, probeKey}, "/")
}
