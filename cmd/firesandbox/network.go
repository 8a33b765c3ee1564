package main

import (
	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// networkConfig is how a Service in this process gives VMs a network:
// the config file's [serve.network] table, its mode overridden by mode
// (the --network flag) when set. Without the table: auto, with IPv4
// forwarding enabled on the uplink's default-route interfaces (replies to
// the VMs' masqueraded traffic come back in through them). serve and the
// CLI's in-process service use the same, so a sandbox resumes with the
// device it was made with.
func (g *globalFlags) networkConfig(mode string) *sandbox.NetworkConfig {
	c := sandbox.NetworkConfig{Mode: sandbox.NetworkAuto, Config: network.Config{EnableForwarding: true}}
	if f := g.file.Serve.Network; f != nil {
		c = *f
		if c.Mode == "" {
			c.Mode = sandbox.NetworkAuto
		}
	}
	if mode != "" {
		c.Mode = mode
	}
	return &c
}
