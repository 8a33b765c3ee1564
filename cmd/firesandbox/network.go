package main

import "github.com/firesandbox/firesandbox/internal/sandbox"

// networkConfig is how a Service in this process gives VMs a network:
// the config file's [serve.network] table, its mode overridden by mode
// (the --network flag) when set. Without the table: auto, which gives VMs
// a network where the host can (doctor says), and changes no host
// setting: IPv4 forwarding on the uplink, which replies to the VMs'
// masqueraded traffic need, is turned on only with enable_forwarding =
// true (or by the operator's sysctl). serve and the CLI's in-process
// service use the same, so a sandbox resumes with the device it was made
// with.
func (g *globalFlags) networkConfig(mode string) *sandbox.NetworkConfig {
	c := sandbox.NetworkConfig{Mode: sandbox.NetworkAuto}
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
