// Package e2b serves E2B's API over firesandbox's sandboxes, so that the
// official e2b and @e2b/code-interpreter SDKs work unchanged against
// `firesandbox serve` (E2B_API_URL and E2B_SANDBOX_URL pointed at it).
// It is a thin adapter: every call goes to the same sandbox.Sandboxes the
// native /v1 API uses.
//
//	h, _ := e2b.New(e2b.Config{}, e2b.Deps{Sandboxes: svc.Sandboxes, DB: svc.DB, Catalog: cat, Secret: key, ...})
//	h.Routes(mux)                 // the control plane, behind the API key
//	if e2b.IsDataPlane(r) {       // E2b-Sandbox-Id / E2b-Sandbox-Port
//		h.DataPlane().ServeHTTP(w, r) // authenticated by the sandbox's token
//	}
//
// Control plane (E2B's REST API as the SDKs call it): POST/GET
// /v2/sandboxes (create; list with state and metadata filters and
// x-next-token pages), GET/DELETE /sandboxes/{id}, /timeout, /refreshes,
// /pause, /resume, POST /v2/sandboxes/{id}/connect (200 running, 201
// resumed), PUT /sandboxes/{id}/network. Errors carry E2B's numeric code.
// A template ID is a language name or alias, or one of the SDKs'
// defaults (Config.Templates). Each sandbox's envd access token and
// traffic token are derived from a server secret (LoadSecret): nothing
// per sandbox is stored.
//
// Data plane: port 49983 is envd, process.Process and
// filesystem.Filesystem over Connect (envdpb, generated from envd's
// service definitions) on the agent's process table and file calls, plus
// REST /files and /health; port 49999 is the code interpreter, a server
// in the code-interpreter template's guest (languages/code-interpreter.py)
// reached through its relay; any other port goes to the network's port
// proxy (Deps.Ports).
//
// EnvdVersion says which envd features the SDKs may use.
package e2b
