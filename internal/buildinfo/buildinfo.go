// Package buildinfo reports the version this binary was built from.
package buildinfo

import (
	"runtime/debug"
	"sync"
)

// Version is set with -ldflags "-X .../buildinfo.Version=..."; otherwise it
// is derived from the VCS stamp Go embeds.
var Version = ""

var once sync.Once

// String returns the version: a release tag, a VCS revision (with
// "+dirty" for uncommitted changes) or "dev".
func String() string {
	once.Do(func() {
		if Version != "" {
			return
		}
		Version = "dev"
		bi, ok := debug.ReadBuildInfo()
		if !ok {
			return
		}
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" {
			Version = rev + dirty
		}
	})
	return Version
}
