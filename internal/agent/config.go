package agent

import (
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// Config says how the agent isolates and bounds what it runs.
type Config struct {
	// Root is the directory commands are chrooted into; empty means no chroot.
	Root string
	// UID and GID commands run as; negative means the agent's own.
	UID, GID int
	// CgroupParent is a cgroup v2 directory under which each exec gets its
	// own cgroup (memory and pids limits, peak memory, kill of the whole
	// tree); empty means no cgroups.
	CgroupParent string
	// Confine starts commands under no_new_privs and the seccomp filter
	// of seccomp.go (the guest does; tests may).
	Confine bool
	// Defaults fill zero fields of a request's limits; Max clamps them.
	Defaults, Max agentproto.Limits
	// Version and Kernel are reported in Hello.
	Version, Kernel string
	// Shutdown is called on a Shutdown request (the guest powers off).
	Shutdown func()
	// Resync applies a ResyncRequest (clock, entropy, identity).
	Resync func(agentproto.ResyncRequest) error
	// BootTime is when the guest started, for Hello's uptime.
	BootTime time.Time

	// SetClock sets the system clock (the guest's agent does; nil leaves
	// it alone). Spares start with the clock set back: see clockSkew.
	SetClock func(time.Time) error

	prewarm *prewarmer // set by NewServer
	spares  *sparePool // set by NewServer
}

// defaultPath is the PATH commands get unless the request sets one.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// limits are a request's effective limits under this agent's defaults
// and maxima.
func (c *Config) limits(req agentproto.Limits) agentproto.Limits {
	return req.Effective(orDefault(c.Defaults, agentproto.DefaultLimits), orDefault(c.Max, agentproto.MaxLimits))
}

func orDefault(l, d agentproto.Limits) agentproto.Limits {
	if l == (agentproto.Limits{}) {
		return d
	}
	return l
}

func (c *Config) environ(env []string, dir string) []string {
	out := []string{"PATH=" + defaultPath, "HOME=" + dir, "LANG=C.UTF-8", "TMPDIR=/tmp"}
	seen := map[string]int{"PATH": 0, "HOME": 1, "LANG": 2, "TMPDIR": 3}
	for _, e := range env {
		k, _, _ := strings.Cut(e, "=")
		if i, ok := seen[k]; ok {
			out[i] = e
			continue
		}
		seen[k] = len(out)
		out = append(out, e)
	}
	return out
}
