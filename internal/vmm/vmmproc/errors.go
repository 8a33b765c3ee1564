package vmmproc

import "errors"

// Sentinel errors.
var (
	// ErrNoRecord: a run directory holds no readable VMM record.
	ErrNoRecord = errors.New("vmmproc: no VMM record")
	// ErrNoID: every id of a pool is leased.
	ErrNoID = errors.New("vmmproc: no free id")
)
