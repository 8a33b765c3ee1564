// Package tenant holds who may use a firesandbox server and how much:
// tenants, their API keys (stored hashed in the state database) and their
// quotas.
//
// A request's key names its tenant; everything a tenant makes (sandboxes,
// runs, hibernations, Judge0 submissions) belongs to it, and another
// tenant's things do not exist for it. The server's single --api-key, and
// requests that need no key (the owner-only unix socket, loopback without
// a key), act for the Default tenant.
//
//	keys, _ := tenant.OpenStore(db.SQL())           // creates its tables
//	secret, k, _ := keys.CreateKey(ctx, "acme", "ci") // e2b_<40 hex>, shown once
//	auth := tenant.NewAuthenticator(keys, legacyKey)
//	name, err := auth.Authenticate(ctx, secret)      // "acme"
//	ctx = tenant.WithTenant(ctx, name)              // what the layers below read
//
//	q := tenant.NewQuotas(tenant.Quota{VMs: 4, Sandboxes: 20}, keys, usageOf)
//	if err := q.Allow(ctx, name); err != nil { ... } // request rate: ErrQuota (429)
//	gate := q.Gate(globalLimiter)                   // concurrent VMs per tenant
//	release, err := q.Admit(ctx, name, tenant.Request{Op: tenant.OpCreate, MemoryMiB: 512})
//
// # Keys
//
// A key is "e2b_" followed by 40 lowercase hex digits (160 random bits), the
// format of E2B's own keys, so one key works for the native API, Piston,
// Judge0 (X-Auth-Token) and E2B's SDKs (X-API-KEY) alike. The database keeps
// only its SHA-256; a key is shown once, when made. Its ID (the first 12 hex
// digits of the hash) names it in listings and for removal, and reveals
// nothing of the key.
//
// # Quotas
//
// Each tenant has the server's default Quota, with any field overridden
// per tenant (SetQuota). Zero means no limit. Exceeding one is ErrQuota,
// with a message that names the limit; the API answers 429.
package tenant
