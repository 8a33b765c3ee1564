//go:build !amd64

package agent

// No filter is defined for this architecture: startConfined refuses.
var syscallABIs []syscallABI
