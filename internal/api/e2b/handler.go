package e2b

import (
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/network"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
)

// Config configures the adapter. Zero fields take the defaults noted.
type Config struct {
	// Templates maps E2B template IDs to catalog languages, on top of the
	// catalog's own names and aliases. Default: the SDKs' defaults (base,
	// code-interpreter-v1, code-interpreter) to DefaultTemplate.
	Templates map[string]string `json:"templates" toml:"templates"`
	// DefaultTimeout is a sandbox's lifetime when the request names none
	// (the SDKs' documented default); default 5 minutes.
	DefaultTimeout time.Duration `json:"default_timeout" toml:"default_timeout"`
	// MaxTimeout caps a lifetime asked for at create, connect or timeout;
	// default 24 hours.
	MaxTimeout time.Duration `json:"max_timeout" toml:"max_timeout"`
	// MaxUpload caps one file upload; default agentproto's transfer bound.
	MaxUpload int64 `json:"max_upload" toml:"max_upload"`
	// MaxCell caps one code interpreter execution; default 1 hour.
	MaxCell time.Duration `json:"max_cell" toml:"max_cell"`
}

// DefaultTemplate is the catalog language E2B's default templates run on:
// Python with numpy, pandas and matplotlib, a code interpreter server
// loaded in its snapshot, and E2B's user and home.
const DefaultTemplate = "code-interpreter"

func (c *Config) setDefaults() {
	if c.Templates == nil {
		c.Templates = map[string]string{"base": DefaultTemplate, "code-interpreter-v1": DefaultTemplate, "code-interpreter": DefaultTemplate}
	}
	if c.DefaultTimeout == 0 {
		c.DefaultTimeout = 5 * time.Minute
	}
	if c.MaxTimeout == 0 {
		c.MaxTimeout = 24 * time.Hour
	}
	if c.MaxUpload == 0 {
		c.MaxUpload = maxTransfer
	}
	if c.MaxCell == 0 {
		c.MaxCell = time.Hour
	}
}

// Validate checks a Config.
func (c *Config) Validate() error {
	if c.DefaultTimeout < 0 || c.MaxTimeout < 0 || c.MaxUpload < 0 || c.MaxCell < 0 {
		return fmt.Errorf("%w: limits must not be negative", ErrBadConfig)
	}
	if c.MaxTimeout > 0 && c.DefaultTimeout > c.MaxTimeout {
		return fmt.Errorf("%w: default timeout %s is over the maximum %s", ErrBadConfig, c.DefaultTimeout, c.MaxTimeout)
	}
	return nil
}

// Deps are what the adapter runs on: the same sandboxes the native API
// uses, and the API package's request context (tenant, error statuses).
type Deps struct {
	Sandboxes *sandbox.Sandboxes
	// DB is the state database the sandboxes live in; the adapter reads a
	// record's owner from it to authenticate data-plane requests (which
	// carry a sandbox's token, not an API key) and stores network policies.
	DB      *state.DB
	Catalog *image.Catalog
	// Installed says whether a language's image is built here.
	Installed func(e *image.Entry) bool
	// Tenant is the tenant a control-plane request was authenticated as.
	Tenant func(r *http.Request) string
	// Status maps an error to an HTTP status: the API's one error map.
	Status func(err error) int
	// Secret keys the sandboxes' access tokens (at least 32 bytes; see
	// LoadSecret).
	Secret []byte
	// Ports reaches a port inside a sandbox (the network's port proxy);
	// nil while VMs have no network: such requests get 502.
	Ports  func(r *http.Request, sb state.Sandbox, port int) (network.PortDialer, error)
	Logger *slog.Logger
}

// Handler is the E2B API: the control plane (Control) and the data plane
// (DataPlane: envd and the code interpreter, routed by E2b-Sandbox-Id and
// E2b-Sandbox-Port).
type Handler struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	tok  tokens
	envd http.Handler // the Connect services
}

// New returns the adapter.
func New(cfg Config, deps Deps) (*Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	switch {
	case deps.Sandboxes == nil || deps.DB == nil || deps.Catalog == nil:
		return nil, fmt.Errorf("%w: sandboxes, state and catalog are required", ErrBadConfig)
	case len(deps.Secret) < 32:
		return nil, fmt.Errorf("%w: the token secret must have at least 32 bytes", ErrBadConfig)
	}
	if deps.Installed == nil {
		deps.Installed = func(*image.Entry) bool { return true }
	}
	if deps.Tenant == nil {
		deps.Tenant = func(*http.Request) string { return "" }
	}
	if deps.Status == nil {
		deps.Status = func(error) int { return http.StatusInternalServerError }
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	for id, lang := range cfg.Templates {
		if _, err := deps.Catalog.Lookup(lang, ""); err != nil {
			return nil, fmt.Errorf("%w: template %q: %w", ErrBadConfig, id, err)
		}
	}
	h := &Handler{cfg: cfg, deps: deps, log: deps.Logger, tok: tokens{secret: deps.Secret}}
	h.envd = h.envdServices()
	return h, nil
}

// Config returns the effective configuration.
func (h *Handler) Config() Config { return h.cfg }
