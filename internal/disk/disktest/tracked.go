package disktest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/firesandbox/firesandbox/internal/disk"
)

// Tracked wraps a Layerer for tests of its users: it counts what is
// attached, and hands out each attached disk under a path of its own (a
// symlink in DevDir, as a device node would be), so a test sees whether
// the VMM got the attached path rather than the stored one.
type Tracked struct {
	disk.Layerer
	// DevDir holds the attached disks' paths.
	DevDir string

	mu    sync.Mutex
	open  map[string]int // vm -> attachments not closed
	saves int
}

// NewTracked wraps l, with attached paths in devDir.
func NewTracked(l disk.Layerer, devDir string) *Tracked {
	return &Tracked{Layerer: l, DevDir: devDir, open: map[string]int{}}
}

// Attach attaches through the wrapped Layerer and links the result.
func (t *Tracked) Attach(ctx context.Context, vm, p string) (disk.Attached, error) {
	a, err := t.Layerer.Attach(ctx, vm, p)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(t.DevDir, 0o700); err != nil {
		a.Close(ctx)
		return nil, err
	}
	link := filepath.Join(t.DevDir, vm)
	if err := os.Symlink(a.Path(), link); err != nil {
		a.Close(ctx)
		return nil, fmt.Errorf("attach %s: %w", vm, err)
	}
	t.mu.Lock()
	t.open[vm]++
	t.mu.Unlock()
	return &tracked{Attached: a, t: t, vm: vm, link: link}, nil
}

// Open lists the VMs with a disk still attached.
func (t *Tracked) Open() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var vms []string
	for vm, n := range t.open {
		if n > 0 {
			vms = append(vms, vm)
		}
	}
	sort.Strings(vms)
	return vms
}

// Saves is how many times an attached disk was saved.
func (t *Tracked) Saves() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.saves
}

type tracked struct {
	disk.Attached
	t      *Tracked
	vm     string
	link   string
	closed bool
}

func (a *tracked) Path() string { return a.link }

func (a *tracked) Save(ctx context.Context, dst string) error {
	a.t.mu.Lock()
	a.t.saves++
	a.t.mu.Unlock()
	return a.Attached.Save(ctx, dst)
}

func (a *tracked) Close(ctx context.Context) error {
	err := a.Attached.Close(ctx)
	a.t.mu.Lock()
	defer a.t.mu.Unlock()
	if !a.closed {
		a.closed = true
		a.t.open[a.vm]--
		os.Remove(a.link)
	}
	return err
}
