package drivers

import "errors"

// ErrNoDriver: no driver can run VMs on this host with this configuration.
var ErrNoDriver = errors.New("drivers: no usable VMM driver")
