package qemu

import (
	"errors"
	"fmt"
)

// Sentinel errors.
var (
	// ErrMonitor: QEMU's monitor (QMP) did not come up, or broke.
	ErrMonitor = errors.New("qemu: monitor failed")
	// ErrMigration: saving or loading a snapshot's device state failed.
	ErrMigration = errors.New("qemu: migration failed")
)

// QMPError is an error QEMU answered a command with.
type QMPError struct{ Command, Class, Desc string }

func (e *QMPError) Error() string { return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc) }
