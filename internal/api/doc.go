// Package api is firesandbox's HTTP API: the native JSON API under /v1,
// Piston v2 compatibility under /api/v2, /healthz and /metrics. This is
// the only place errors become HTTP status codes (see statusOf).
//
// A Server owns what `firesandbox serve` runs besides the Manager: the
// state database, the long-lived sandboxes, the VM limiter and the warm
// pools it starts.
//
//	mgr, _ := sandbox.New(sandbox.Config{})
//	srv, _ := api.Open(api.Config{Listen: "127.0.0.1:7070"}, mgr)
//	ln, _ := net.Listen("tcp", "127.0.0.1:7070")
//	go srv.Serve(ln)
//	...
//	srv.Shutdown(ctx) // stop accepting, finish or cancel runs, hibernate
//	                  // sandboxes, stop pools, close the database
//
// Endpoints:
//
//	GET    /healthz                          {"status":"ok"}
//	GET    /metrics                          Prometheus text format
//	GET    /v1/languages                     the catalog
//	POST   /v1/run                           one-shot run, JSON result
//	POST   /v1/run/stream                    same, output as NDJSON (or SSE); "encoding": "base64" makes it byte-exact (stdin and output data in base64)
//	POST   /v1/sandboxes                     create a long-lived sandbox (restored from its shape's snapshot)
//	GET    /v1/sandboxes                     list; ?metadata=k=v and ?state=S (repeatable) filter
//	GET    /v1/sandboxes/{id}                one
//	DELETE /v1/sandboxes/{id}                delete (stops its VM, removes its files)
//	POST   /v1/sandboxes/{id}/exec           run a command (resumes a hibernated one)
//	POST   /v1/sandboxes/{id}/exec/stream    same, streamed
//	POST   /v1/sandboxes/{id}/files          upload files (JSON, relative paths)
//	GET    /v1/sandboxes/{id}/files?path=P   download one file (raw bytes)
//	POST   /v1/sandboxes/{id}/pause          snapshot memory+disk to storage, stop the VM (alias: /hibernate)
//	POST   /v1/sandboxes/{id}/resume         restore it; optional {"timeout_s": N}: its new lifetime
//	POST   /v1/sandboxes/{id}/timeout        {"timeout_s": N}: the sandbox ends N s from now
//	POST   /v1/sandboxes/{id}/fork           {"count": N}: N running copies (memory, processes, files)
//	GET    /v1/sandboxes/{id}/processes      the agent's processes ("background": true in exec answers {"pid": N})
//	GET    /v1/sandboxes/{id}/processes/{pid}/stream   its output again (NDJSON or SSE; ?replay=1), then its end
//	GET    /v1/sandboxes/{id}/processes/{pid}/ws       the same over WebSocket, with stdin and control messages
//	POST   /v1/sandboxes/{id}/processes/{pid}/stdin    {"data": "...", "encoding": "base64"?, "close": bool}
//	POST   /v1/sandboxes/{id}/processes/{pid}/signal   {"signal": "SIGTERM"}
//	POST   /v1/sandboxes/{id}/processes/{pid}/resize   {"cols": C, "rows": R}
//	GET    /v1/sandboxes/{id}/pty?cols=&rows=&cmd=     a terminal over WebSocket (see native_processes.go)
//	GET    /v1/sandboxes/{id}/files/stat?path=P        one file
//	GET    /v1/sandboxes/{id}/files/list?path=P&depth=N
//	POST   /v1/sandboxes/{id}/files/mkdir    {"path", "parents"}
//	POST   /v1/sandboxes/{id}/files/move     {"from", "to"}
//	DELETE /v1/sandboxes/{id}/files?path=P&recursive=1
//	GET    /v1/sandboxes/{id}/files/watch?path=P&recursive=1   changes, streamed (NDJSON or SSE)
//	GET    /v1/sandboxes/{id}/network        its egress policy (canonical)
//	PUT    /v1/sandboxes/{id}/network        replace it (POST too); a running sandbox's takes effect at once
//	*      /v1/sandboxes/{id}/ports/{port}/… HTTP and WebSocket proxy to a server in the sandbox (its tenant only)
//	GET    /api/v2/runtimes                  Piston: installed runtimes
//	POST   /api/v2/execute                   Piston: run, Piston's result shape
//	GET    /api/v2/connect                   Piston: interactive run over a WebSocket (piston_ws.go)
//
// Sandbox lifetimes: a create's lifetime_s (default 300) is its timeout;
// at the end it is killed, or paused with "on_timeout": "pause". A paused
// sandbox does not time out; a resume starts a new lifetime. The create's
// idle_timeout_s (first named timeout_s, still accepted) pauses it after
// that long unused, transparently: the next call resumes it.
//
// Requests over serve's owner-only unix socket need no key, and a run
// over it may ask for any limits up to the agent's maxima (as a run the
// same user makes in-process may): --max-timeout and the output cap are
// for TCP clients. `firesandbox run` goes through it when serve runs.
//
// When an API key is configured every endpoint but /healthz needs it, as
// "Authorization: Bearer KEY" or "X-API-Key: KEY".
package api
