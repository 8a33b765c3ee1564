// Package sandbox turns requests into VMs: it picks the driver, finds the
// kernel and the language image, boots (or, later, restores) a machine,
// talks to its agent and always cleans up.
//
// Run is the one-shot path:
//
//	mgr, _ := sandbox.New(sandbox.Config{DataDir: "/var/lib/firesandbox"})
//	res, err := mgr.Run(ctx, sandbox.RunRequest{Language: "python",
//		Files: []agentproto.File{{Content: []byte("print(6*7)")}}}, streams)
//
// Every VM it starts is stopped before Run returns, on success, error, or
// cancellation; a process killed outright leaves a run directory that the
// next Manager sweeps.
package sandbox
