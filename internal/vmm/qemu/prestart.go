package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/vmm"
	"github.com/firesandbox/firesandbox/internal/vmm/vmmproc"
	"golang.org/x/sys/unix"
)

// Started ahead: with Config.Prestart > 0, the driver keeps QEMU
// processes waiting in `-incoming defer` for the snapshots it restores
// again and again (a pool's, serve's), so a restore adopts one and skips
// starting QEMU. A spare is started exactly as a restore's QEMU is (its
// own uid, chroot, namespaces, seccomp), from the same files: only the
// migration and cont are left. It is made only for a machine without a
// network device or a writable disk (those are per VM), and only once a
// snapshot has been restored twice, so a one-shot run starts none.
//
// Spares live in run dirs beside the restores' own (the adoption is a
// rename); a file per spare in MemoryDir/spares names it, so a driver
// started after this process was killed sweeps what it left (QEMU runs
// as another uid, which clears its parent-death signal). Close stops them.

// maxSpareKeys bounds the snapshots spares are kept for; the oldest
// snapshot's spares go first.
const maxSpareKeys = 8

// spareDelay defers starting a spare after the restore that asked for
// it: the restored guest's first moments, which TCG spends translating
// its code, are its restore's critical path, and a QEMU starting beside
// it on a small host slowed its hello by a fifth.
const spareDelay = 300 * time.Millisecond

// spareDirPrefix names spare run dirs: qemu-spare-<pid>-<n>.
const spareDirPrefix = "qemu-spare-"

type spares struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	next     int
	byKey    map[string][]*Machine
	order    []string       // keys, oldest first
	restores map[string]int // restores seen per key
	starting map[string]int // spares being started per key
}

func newSpares() *spares {
	ctx, cancel := context.WithCancel(context.Background())
	return &spares{ctx: ctx, cancel: cancel, byKey: map[string][]*Machine{}, restores: map[string]int{}, starting: map[string]int{}}
}

// spareKey says what a spare must have been started with to serve a
// restore of snapshotDir with cfg: "" when no spare can (a network device
// or a writable disk, or no memory file). The memory file's identity is
// part of it, so a snapshot replaced at the same path has other spares.
func spareKey(snapshotDir string, cfg vmm.Config, ram *os.File) string {
	if ram == nil || cfg.Net != nil {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\x00%s\x00", snapshotDir, filepath.Dir(cfg.RunDir))
	ids := []*os.File{ram}
	for _, d := range cfg.Disks {
		if !d.ReadOnly {
			return ""
		}
		f, err := os.Open(d.Path)
		if err != nil {
			return ""
		}
		defer f.Close()
		ids = append(ids, f)
	}
	for _, f := range ids {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return ""
		}
		fmt.Fprintf(&b, "%d:%d:%d:%d.%d\x00", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
	}
	c := cfg
	c.ID, c.RunDir = "", ""
	j, _ := json.Marshal(c)
	b.Write(j)
	return b.String()
}

// takeSpare adopts a spare started for key as the machine of cfg: its run
// dir is renamed to cfg.RunDir. nil when there is none, or it died.
func (d *Driver) takeSpare(key string, cfg vmm.Config) *Machine {
	s := d.spares
	for {
		s.mu.Lock()
		list := s.byKey[key]
		if len(list) == 0 || s.closed {
			s.mu.Unlock()
			return nil
		}
		m := list[0]
		s.byKey[key] = list[1:]
		s.mu.Unlock()
		if err := m.adopt(cfg); err != nil {
			d.log.Warn("spare QEMU not usable", "vm", m.cfg.ID, "err", err)
			m.stopSpare()
			continue
		}
		return m
	}
}

// adopt makes a spare the machine of cfg.
func (m *Machine) adopt(cfg vmm.Config) error {
	if m.proc.Done() {
		return fmt.Errorf("%w: %v", vmm.ErrExited, m.proc.Err())
	}
	if _, err := os.Lstat(cfg.RunDir); err == nil {
		return fmt.Errorf("run dir %s: %w", cfg.RunDir, vmm.ErrInUse)
	}
	if err := os.Rename(m.cfg.RunDir, cfg.RunDir); err != nil {
		return err
	}
	m.claim.Moved(cfg.RunDir)
	os.Remove(m.spareFile)
	m.spareFile = ""
	m.cfg = cfg
	m.log = m.d.log.With("vm", cfg.ID)
	m.qmp.calls.Store(0)
	m.times = vmm.StartTimes{Prestarted: true}
	return nil
}

// stopSpare stops a spare that was never adopted.
func (m *Machine) stopSpare() {
	_ = m.Stop(context.Background())
	if m.spareFile != "" {
		os.Remove(m.spareFile)
	}
}

// restored notes a restore of key and starts spares for it as demand
// says: once it has been restored twice, up to Prestart waiting.
func (d *Driver) restored(key, snapshotDir string, cfg vmm.Config) {
	s := d.spares
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if _, ok := s.restores[key]; !ok {
		s.order = append(s.order, key)
		for len(s.order) > maxSpareKeys {
			old := s.order[0]
			s.order = s.order[1:]
			for _, m := range s.byKey[old] {
				go m.stopSpare()
			}
			delete(s.byKey, old)
			delete(s.restores, old)
		}
	}
	s.restores[key]++
	if s.restores[key] < 2 {
		return
	}
	for n := len(s.byKey[key]) + s.starting[key]; n < d.cfg.Prestart; n++ {
		s.starting[key]++
		s.next++
		s.wg.Add(1)
		go d.startSpare(key, snapshotDir, cfg, s.next)
	}
}

// startSpare starts one spare for key, owned by d.spares.
func (d *Driver) startSpare(key, snapshotDir string, cfg vmm.Config, n int) {
	s := d.spares
	defer s.wg.Done()
	var m *Machine
	var err error
	select {
	case <-time.After(spareDelay):
		m, err = d.newSpare(key, snapshotDir, cfg, n)
	case <-s.ctx.Done():
		err = s.ctx.Err()
	}
	s.mu.Lock()
	s.starting[key]--
	keep := err == nil && !s.closed && len(s.byKey[key]) < d.cfg.Prestart
	if _, known := s.restores[key]; keep && known {
		s.byKey[key] = append(s.byKey[key], m)
	} else {
		keep = false
	}
	s.mu.Unlock()
	if err != nil {
		if s.ctx.Err() == nil {
			d.log.Warn("start spare QEMU", "err", err)
		}
		return
	}
	if !keep {
		m.stopSpare()
	}
}

func (d *Driver) newSpare(key, snapshotDir string, cfg vmm.Config, n int) (*Machine, error) {
	ram, err := os.OpenFile(filepath.Join(snapshotDir, vmm.SnapshotMemoryFile), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if spareKey(snapshotDir, cfg, ram) != key {
		ram.Close()
		return nil, fmt.Errorf("snapshot %s changed", snapshotDir)
	}
	if !d.cfg.Unconfined {
		if err := shareWithGroup(ram, d.cfg.GID); err != nil {
			ram.Close()
			return nil, err
		}
	}
	name := fmt.Sprintf("%d-%d", os.Getpid(), n)
	cfg.ID = "spare-" + strconv.Itoa(n)
	cfg.RunDir = filepath.Join(filepath.Dir(cfg.RunDir), spareDirPrefix+name)
	// Named before QEMU starts, so a kill at any point leaves it found.
	rec := filepath.Join(d.cfg.MemoryDir, "spares", name)
	if err := os.MkdirAll(filepath.Dir(rec), 0o700); err != nil {
		ram.Close()
		return nil, err
	}
	if err := os.WriteFile(rec, []byte(cfg.RunDir), 0o600); err != nil {
		ram.Close()
		return nil, err
	}
	m, err := d.start(d.spares.ctx, &cfg, launch{op: "prestart", ram: ram, incoming: true})
	if err != nil {
		os.Remove(rec)
		return nil, err
	}
	// What every restore sets first, off its critical path.
	if err := m.setMigrationCaps(d.spares.ctx); err != nil {
		m.stopSpare()
		return nil, err
	}
	m.spareFile = rec
	return m, nil
}

// Close stops the spares and waits for those being started. Machines
// already handed out are the caller's.
func (d *Driver) Close() error {
	s := d.spares
	s.mu.Lock()
	s.closed = true
	var all []*Machine
	for k, list := range s.byKey {
		all = append(all, list...)
		delete(s.byKey, k)
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	for _, m := range all {
		m.stopSpare()
	}
	return nil
}

// Spares says how many QEMU processes wait, started ahead.
func (d *Driver) Spares() int {
	s := d.spares
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.byKey {
		n += len(l)
	}
	return n
}

// sweepSpares stops the spares of driver processes that are gone, and
// removes their run dirs.
func (d *Driver) sweepSpares() {
	recs, _ := filepath.Glob(filepath.Join(d.cfg.MemoryDir, "spares", "*-*"))
	for _, rec := range recs {
		pidStr, _, _ := strings.Cut(filepath.Base(rec), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue // its process lives (in this one: another driver's)
		}
		b, err := os.ReadFile(rec)
		dir := string(b)
		// The record is ours (MemoryDir is private), but a run dir is
		// only ever one named like a spare's.
		if err == nil && filepath.IsAbs(dir) && strings.HasPrefix(filepath.Base(dir), spareDirPrefix) {
			if killed, err := vmmproc.Sweep(dir); err != nil {
				d.log.Warn("sweep spare QEMU", "dir", dir, "err", err)
				continue
			} else if killed {
				d.log.Info("killed a spare QEMU a dead process left", "dir", dir)
			}
		}
		os.Remove(rec)
	}
}
