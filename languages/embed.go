// Package languages holds the language catalog: one TOML file per
// language, compiled into the binary. See internal/image for the format.
package languages

import "embed"

// FS holds every catalog entry (*.toml).
//
//go:embed *.toml
var FS embed.FS
