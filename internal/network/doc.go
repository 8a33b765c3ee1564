// Package network gives a VM egress to the network under a policy, with
// every enforcement point outside the guest.
//
// The default is no network: a VM whose Policy is not Enabled gets no
// device. With a policy, each VM gets its own network namespace:
//
//	guest 10.0.2.15 (same in every VM and clone: restored snapshots keep
//	  |                their address and MAC)
//	tap0 10.0.2.2     gateway, our resolver (:53) and SNI/Host filter (:15001);
//	  |                its MAC is the same in every VM too (a clone's ARP cache)
//	  | nftables: DNS redirected to the resolver, all TCP to the filter,
//	  |           UDP/ICMP forwarded only to allowed CIDRs, IPv6 dropped
//	eth0 10.200.n.2 --veth-- <prefix><owner>h<n> 10.200.n.1 in the uplink
//	                          (the host's namespace), masqueraded out
//
// The resolver answers only names the policy allows and remembers what it
// answered; the filter reads each connection's original destination and
// its TLS ServerName or HTTP Host, and dials out (from the VM's namespace)
// only if the policy allows that pair. A guest that hard-codes the address
// of a denied name, names an allowed host while dialling another address,
// or waits before naming a denied one, is refused. Link-local (metadata),
// private, loopback and the host's own addresses are denied unless an
// entry names them.
//
// Lifecycle, as the sandbox Manager uses it:
//
//	h, err := network.New(network.Config{EnableForwarding: true}) // serve start
//	rep, err := h.Sweep()                  // remove what a killed serve left
//	dg := network.Diagnose(ctx, cfg)       // doctor
//
//	policy := network.Policy{AllowOut: []string{"pypi.org", "*.pythonhosted.org"}}
//	err = policy.Validate()                // ErrInvalidPolicy: 400 with err's message
//	v, err := h.Create(ctx, vmID, policy)  // before the VMM starts or restores
//	tap, err := v.OpenTap()                // QEMU: -netdev tap,fd=N,vnet_hdr=on
//	                                       // Firecracker: jailer --netns v.NetnsPath(), host_dev_name v.TapName()
//	agent.ConfigureNetwork(ctx, ...v.Guest()) // after boot and after every restore
//	err = v.SetPolicy(ctx, newPolicy)      // while it runs; takes effect at once
//	http.StripPrefix(prefix, network.PortProxy(v, port, network.PortProxyConfig{})) // ports
//	v.Close()                              // after the VMM stopped
//	h.Close()                              // serve stop
//
// Names carry the Host's prefix and a random owner tag locked in RunDir,
// so several serve processes share a machine and each Sweep removes only
// what dead owners left.
package network
