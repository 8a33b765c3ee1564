// Package cluster runs many hosts as one firesandbox: a shared directory
// in PostgreSQL (hosts and their leases, sandboxes and their owners,
// tenants and API keys), hibernated sandboxes in S3, and an HTTP router
// that sends each sandbox's requests to the host that owns it. There is
// no consensus of its own: placement and ownership are transactions in
// PostgreSQL, and every ownership write is fenced.
//
// One serve per host, as its lifecycle goes:
//
//	node, err := cluster.Open(ctx, cluster.Config{URL: "postgres://…", Address: "http://10.0.0.11:7070",
//		HostIDFile: "/var/lib/firesandbox/host-id", Capacity: 16},
//		cluster.WithRemote(remote, trust))        // registers (a new epoch), heartbeats
//	svc, _ := sandbox.OpenService(mgr, sandbox.ServiceConfig{Directory: node}, log)
//	err = node.Attach(ctx, svc.Sandboxes)      // drop local copies others own now, record what changed
//	srv, _ := api.Open(cfg, svc, api.WithOuter(func(h http.Handler) http.Handler {
//		return node.Handler(h, cluster.Routes{Full: limiterFull})
//	}))
//	...                                        // SIGTERM:
//	node.Drain(ctx)                            // no new sandboxes; /healthz answers 503
//	srv.Shutdown(ctx)
//	svc.Close(ctx)                             // hibernates, and the node stores each hibernation in S3
//	node.Close(ctx)                            // releases them to the other hosts, ends the lease
//
// The Node is the sandbox.Directory of its host's Sandboxes: Admit
// reserves room in the directory before a create's VM starts (a row lock
// on the host: concurrent creates never overshoot its capacity), Begin
// lets a resume start only while the host's lease is current, Changed
// records each new state, and Hibernated pushes a fresh hibernation to S3
// (HibernationName(id, generation), manifest last) before recording that
// it is there.
//
// Failure handling, all in the Node's loops:
//   - heartbeat: renews the lease every Heartbeat; without a renewal for
//     3/4 of the TTL the host stops writing shared state (creates and
//     resumes get 503; live sandboxes keep running and serving).
//   - takeover: a host that has heard the directory for a whole TTL claims
//     sandboxes of hosts whose heartbeat is older than the TTL, each
//     claimed by exactly one host (FOR UPDATE SKIP LOCKED): hibernated ones
//     stored in S3 are pulled (signature, Spec and digests checked) and
//     kept hibernated here; the rest become lost, with a reason.
//   - sync: compares the local records with the directory every SyncEvery
//     and after a reconnect: local copies of sandboxes owned elsewhere (or
//     at a newer generation) are dropped, local changes the directory
//     missed are written, hibernations not yet in S3 are pushed again, and
//     sandboxes the directory gave this host are imported.
//
// The Directory type is the store alone, usable without a Node (tests,
// tools, the tenant package's keys).
package cluster
