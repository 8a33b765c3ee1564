package kvm

import "errors"

// ErrUnusable wraps every reason Open gives.
var ErrUnusable = errors.New("kvm: not usable")
