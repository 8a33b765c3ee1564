package vmmproc

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// RecordFile is the name of the VMM record in a machine's RunDir.
const RecordFile = "vmm.json"

// Record names a VMM process exactly: a pid alone may be reused once the
// process is gone, but pid, start time and boot id together are one
// process. Paths are files outside the RunDir that belong to the machine
// (its RAM file, a jail, a cgroup) and go with it.
type Record struct {
	PID       int      `json:"pid"`
	StartTime uint64   `json:"start_time"`
	BootID    string   `json:"boot_id"`
	Paths     []string `json:"paths,omitempty"`
}

// Record returns the record of p, listing paths to remove with it.
func (p *Process) Record(paths ...string) Record {
	return Record{PID: p.pid, StartTime: p.start, BootID: bootID(), Paths: paths}
}

// WriteRecord stores r in dir atomically (written to a temporary file and
// renamed), so a sweep never reads half a record.
func WriteRecord(dir string, r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+RecordFile+"-*")
	if err != nil {
		return fmt.Errorf("write VMM record: %w", err)
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, RecordFile))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write VMM record: %w", err)
	}
	return nil
}

// ReadRecord reads the record in dir.
func ReadRecord(dir string) (Record, error) {
	var r Record
	b, err := os.ReadFile(filepath.Join(dir, RecordFile))
	if err != nil {
		return r, fmt.Errorf("%w in %s: %v", ErrNoRecord, dir, err)
	}
	if err := json.Unmarshal(b, &r); err != nil || r.PID <= 0 {
		return r, fmt.Errorf("%w in %s: unreadable record", ErrNoRecord, dir)
	}
	for _, p := range r.Paths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
			return r, fmt.Errorf("%w in %s: path %q is not a clean absolute path", ErrNoRecord, dir, p)
		}
	}
	return r, nil
}

// Alive reports whether the recorded process still runs: the same pid,
// started at the same time, in this boot.
func (r Record) Alive() bool {
	if r.BootID != bootID() {
		return false
	}
	st, err := startTime(r.PID)
	return err == nil && st == r.StartTime
}

// Kill ends the recorded process with SIGKILL if it still runs, and waits
// (up to 10s) for it to be gone. It opens a pidfd first and checks the
// start time after, so it never signals a process that merely reuses the
// pid. It reports whether it killed anything.
func (r Record) Kill() (bool, error) {
	fd, err := unix.PidfdOpen(r.PID, 0)
	if errors.Is(err, unix.ESRCH) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("open pidfd of %d: %w", r.PID, err)
	}
	defer unix.Close(fd)
	if !r.Alive() { // checked while the pidfd pins the pid
		return false, nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return false, fmt.Errorf("kill %d: %w", r.PID, err)
	}
	if !waitPidfd(fd, 10_000) {
		return true, fmt.Errorf("process %d did not exit within 10s of SIGKILL", r.PID)
	}
	return true, nil
}

// Sweep cleans up after a machine whose owner died (the daemon was
// SIGKILLed): it kills the VMM recorded in runDir if that very process
// still runs (Firecracker has no parent-death signal, and a QEMU that
// dropped privileges lost its own), removes the recorded paths and then
// runDir itself. A runDir without a record is just removed. It reports
// whether a process was killed.
func Sweep(runDir string) (killed bool, err error) {
	var errs []error
	r, rerr := ReadRecord(runDir)
	if rerr == nil {
		killed, err = r.Kill()
		if err != nil {
			// Leave the files: the process may still use them.
			return killed, fmt.Errorf("sweep %s: %w", runDir, err)
		}
		for _, p := range r.Paths {
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
			} else if strings.HasPrefix(p, "/sys/fs/cgroup/") {
				_ = os.Remove(p) // cgroups are directories RemoveAll cannot empty
			}
		}
	}
	if err := os.RemoveAll(runDir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return killed, fmt.Errorf("sweep %s: %w", runDir, err)
	}
	return killed, nil
}

var bootIDValue = func() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}()

func bootID() string { return bootIDValue }
