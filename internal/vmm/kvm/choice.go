package kvm

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// AccelFile is the name of the cached KVM probe answer in the data dir.
const AccelFile = "accel.json"

// AccelEnv, when set to "kvm" or "tcg", overrides the configured QEMU
// accelerator (tests and CI use it).
const AccelEnv = "FIRESANDBOX_ACCEL"

// AccelChoice is an answer to "does KVM really run our guest here?", as
// cached in AccelFile. internal/vmm/drivers makes it (by booting a probe
// VM); this is the one place it is read and written.
type AccelChoice struct {
	Key    string    `json:"key"`
	Accel  string    `json:"accel"`
	Reason string    `json:"reason"`
	Probed time.Time `json:"probed"`
}

// ReadAccelChoice reads the cached answer in dir.
func ReadAccelChoice(dir string) (AccelChoice, error) {
	var c AccelChoice
	if dir == "" {
		return c, os.ErrNotExist
	}
	b, err := os.ReadFile(filepath.Join(dir, AccelFile))
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil || c.Accel == "" {
		return c, fmt.Errorf("read %s: not an accelerator choice", filepath.Join(dir, AccelFile))
	}
	return c, nil
}

// WriteAccelChoice stores c in dir atomically: another process reading at the
// same time sees the old answer or the new one, never half of one.
func WriteAccelChoice(dir string, c AccelChoice) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+AccelFile+"-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(append(b, '\n'))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, AccelFile))
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// HostKernel is the running kernel's release, part of a choice's key.
func HostKernel() string {
	var uts unix.Utsname
	if unix.Uname(&uts) != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(uts.Release[:])
}
