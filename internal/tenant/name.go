package tenant

import (
	"context"
	"fmt"
)

// Default is the tenant of the server's single --api-key and of requests
// that need no key. It is stored as the empty name, so the sandboxes made
// before tenants existed stay its own; it is shown, and may be named on the
// command line, as DefaultName.
const Default = ""

// DefaultName is how Default is written by people.
const DefaultName = "default"

// MaxNameLen bounds a tenant name.
const MaxNameLen = 63

// Parse turns a name a person wrote into a tenant: DefaultName is
// Default; any other must be 1-63 characters of a-z, 0-9, '.', '_' and '-',
// starting with a letter or digit.
func Parse(name string) (string, error) {
	if name == DefaultName {
		return Default, nil
	}
	if err := ValidName(name); err != nil {
		return "", err
	}
	return name, nil
}

// ValidName checks a stored tenant name other than Default.
func ValidName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("%w: %q: want 1-%d characters", ErrBadName, name, MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return fmt.Errorf("%w: %q: use a-z, 0-9, '.', '_' and '-', starting with a letter or digit", ErrBadName, name)
		}
	}
	if name == DefaultName {
		return fmt.Errorf("%w: %q is the default tenant's name", ErrBadName, name)
	}
	return nil
}

// Display is how a tenant is shown: DefaultName for Default.
func Display(t string) string {
	if t == Default {
		return DefaultName
	}
	return t
}

type ctxKey struct{}

// WithTenant returns ctx acting for tenant t: the API's middleware sets
// it, and the layers below (VM gates, admission) read it.
func WithTenant(ctx context.Context, t string) context.Context {
	return context.WithValue(ctx, ctxKey{}, t)
}

// FromContext is the tenant ctx acts for, and whether one was set.
func FromContext(ctx context.Context) (string, bool) {
	t, ok := ctx.Value(ctxKey{}).(string)
	return t, ok
}
