package disktest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"

	"github.com/firesandbox/firesandbox/internal/disk"
)

// LoopLayers is a Layerer for tests on hosts without device-mapper that
// still want the VMM to get a block device: disks are stored as images
// (as CloneLayers stores them) and attached as loop devices. It shows
// what a VMM and the Manager do with a block-device disk (QEMU's driver
// for it, Firecracker's jail node, flushing before a fork copies it)
// wherever loop devices work. It needs root and losetup. Its Sweep
// knows only the devices this process attached.
type LoopLayers struct {
	disk.CloneLayers

	mu       sync.Mutex
	attached map[string]*loopAttached // by VM
}

// Attach sets up a loop device over the image at p.
func (l *LoopLayers) Attach(ctx context.Context, vm, p string) (disk.Attached, error) {
	if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("attach disk %s: not an image (%v)", p, err)
	}
	out, err := exec.CommandContext(ctx, "losetup", "--find", "--show", p).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("attach disk %s: losetup: %v: %s", p, err, out)
	}
	a := &loopAttached{dev: strings.TrimSpace(string(out)), p: p}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.attached == nil {
		l.attached = map[string]*loopAttached{}
	}
	l.attached[vm] = a
	return a, nil
}

// Sweep detaches the devices of the VMs alive says are dead.
func (l *LoopLayers) Sweep(ctx context.Context, s disk.SweepScope) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for vm, a := range l.attached {
		if !s.Alive(vm) {
			if err := a.Close(ctx); err != nil {
				return err
			}
			delete(l.attached, vm)
		}
	}
	return nil
}

type loopAttached struct {
	mu  sync.Mutex
	dev string
	p   string
}

func (a *loopAttached) Path() string { return a.dev }

// Save flushes what the VMM wrote through the device's page cache, then
// copies the image.
func (a *loopAttached) Save(ctx context.Context, dst string) error {
	f, err := os.Open(a.dev)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return err
	}
	_, err = disk.Clone(ctx, a.p, dst)
	return err
}

func (a *loopAttached) Close(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.dev == "" {
		return nil
	}
	out, err := exec.CommandContext(context.WithoutCancel(ctx), "losetup", "--detach", a.dev).CombinedOutput()
	if err != nil {
		return fmt.Errorf("detach %s: %v: %s", a.dev, err, out)
	}
	a.dev = ""
	return nil
}

// LoopsUnder lists the loop devices backed by files under root.
func LoopsUnder(root string) []string {
	out, _ := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
	var left []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && strings.HasPrefix(f[1], root+"/") {
			left = append(left, f[0]+" on "+f[1])
		}
	}
	return left
}
