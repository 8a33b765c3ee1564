package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// ErrUnknownLanguage means no catalog entry matches a language name.
var ErrUnknownLanguage = errors.New("unknown language")

// Entry is one language of the catalog (languages/<name>.toml).
type Entry struct {
	Name    string   `toml:"name" json:"name"`
	Version string   `toml:"version" json:"version"`
	Aliases []string `toml:"aliases" json:"aliases,omitempty"`
	// Packages are Debian packages installed into the image.
	Packages []string `toml:"packages" json:"packages"`
	// File is the name the main source file gets in the working directory.
	File string `toml:"file" json:"file"`
	// Compile, if set, runs once before Run; a non-zero exit stops there.
	Compile []string `toml:"compile" json:"compile,omitempty"`
	// Run is the command; the program's arguments are appended.
	Run []string `toml:"run" json:"run"`
	// Env is added to the environment of both steps.
	Env []string `toml:"env" json:"env,omitempty"`
	// Limits override the defaults for this language (e.g. a JVM needs
	// more memory and processes).
	Limits agentproto.Limits `toml:"limits" json:"limits"`
	// Unavailable, if set, says why this language cannot be built here;
	// such an entry is listed but never built.
	Unavailable string `toml:"unavailable" json:"unavailable,omitempty"`
	Test        Test   `toml:"test" json:"test"`
	// Prewarm, if set, is a runtime started in the template VM before its
	// snapshot that forks a fresh process per run (see agentproto's
	// PrewarmRequest).
	Prewarm *Prewarm `toml:"prewarm" json:"prewarm,omitempty"`
}

// Prewarm is a language's prewarmed runtime: a program (File, with Code as
// its content) started with Run that serves fork requests on fd 3.
type Prewarm struct {
	Run  []string `toml:"run" json:"run"`
	File string   `toml:"file" json:"file"`
	Code string   `toml:"code" json:"code"`
}

// PrewarmDir is where a prewarmed runtime's file lives in the guest.
const PrewarmDir = "/tmp/.runtime"

// RuntimeID identifies the prewarmed runtime (empty if none), for snapshot
// compatibility: a changed server means a new snapshot.
func (e *Entry) RuntimeID() string {
	if e.Prewarm == nil {
		return ""
	}
	b, _ := json.Marshal(e.Prewarm)
	h := sha256.Sum256(b)
	return "prewarm-" + hex.EncodeToString(h[:6])
}

// Test is a program with its expected output, run by `make test-languages`.
type Test struct {
	Code   string   `toml:"code" json:"code"`
	Args   []string `toml:"args" json:"args,omitempty"`
	Stdin  string   `toml:"stdin" json:"stdin,omitempty"`
	Stdout string   `toml:"stdout" json:"stdout"`
}

var (
	nameRe    = regexp.MustCompile(`^[a-z][a-z0-9+#-]{0,31}$`)
	packageRe = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]{1,63}$`)
)

// Validate reports everything wrong with an entry at once.
func (e *Entry) Validate() error {
	var errs []string
	add := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if !nameRe.MatchString(e.Name) {
		add("name %q: want a lowercase name of at most 32 characters", e.Name)
	}
	if e.Version == "" {
		add("version is empty")
	}
	for _, a := range e.Aliases {
		if !nameRe.MatchString(a) {
			add("alias %q: want a lowercase name", a)
		}
	}
	if e.Unavailable == "" {
		if len(e.Packages) == 0 {
			add("packages is empty (set unavailable = \"why\" if Debian has none)")
		}
		for _, p := range e.Packages {
			if !packageRe.MatchString(p) {
				add("package %q is not a Debian package name", p)
			}
		}
		if err := agentproto.ValidateRelPath(e.File); err != nil || strings.Contains(e.File, "/") {
			add("file %q: want a plain file name", e.File)
		}
		if len(e.Run) == 0 || e.Run[0] == "" {
			add("run is empty")
		}
		if len(e.Compile) > 0 && e.Compile[0] == "" {
			add("compile starts with an empty word")
		}
		if e.Test.Code == "" {
			add("test.code is empty: every language needs a test program")
		}
		if p := e.Prewarm; p != nil {
			if len(p.Run) == 0 || p.Code == "" || strings.Contains(p.File, "/") || agentproto.ValidateRelPath(p.File) != nil {
				add("prewarm needs run, a plain file name and code")
			}
		}
	}
	for _, v := range e.Env {
		if !strings.Contains(v, "=") {
			add("env %q: want KEY=VALUE", v)
		}
	}
	if e.Limits.WallMillis < 0 || e.Limits.OutputBytes < 0 || e.Limits.Procs < 0 || e.Limits.MemoryBytes < 0 {
		add("limits must not be negative")
	}
	if len(errs) > 0 {
		return fmt.Errorf("language %q: %s", e.Name, strings.Join(errs, "; "))
	}
	return nil
}

// ParseEntry decodes one catalog file strictly: unknown keys are errors,
// so a typo never silently drops a setting.
func ParseEntry(name string, data []byte) (*Entry, error) {
	var e Entry
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&e)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("%s: unknown keys: %s", name, strings.Join(keys, ", "))
	}
	if want := strings.TrimSuffix(path.Base(name), ".toml"); e.Name != want {
		return nil, fmt.Errorf("%s: name %q does not match the file name", name, e.Name)
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &e, nil
}

// Catalog is the set of languages.
type Catalog struct {
	entries []*Entry
	byName  map[string]*Entry
}

// LoadCatalog parses every *.toml in fsys.
func LoadCatalog(fsys fs.FS) (*Catalog, error) {
	files, err := fs.Glob(fsys, "*.toml")
	if err != nil {
		return nil, err
	}
	c := &Catalog{byName: map[string]*Entry{}}
	var errs []error
	for _, f := range files {
		b, err := fs.ReadFile(fsys, f)
		if err != nil {
			return nil, err
		}
		e, err := ParseEntry(f, b)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, n := range append([]string{e.Name}, e.Aliases...) {
			if other, dup := c.byName[n]; dup {
				errs = append(errs, fmt.Errorf("%s: name or alias %q is also used by %s", f, n, other.Name))
			}
			c.byName[n] = e
		}
		c.entries = append(c.entries, e)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("language catalog: %w", err)
	}
	sort.Slice(c.entries, func(i, j int) bool { return c.entries[i].Name < c.entries[j].Name })
	return c, nil
}

// Entries returns every entry, sorted by name.
func (c *Catalog) Entries() []*Entry { return slices.Clone(c.entries) }

// Lookup finds a language by name or alias and, unless version is "" or
// "*", by version (an exact match or a prefix at a dot: "3" and "3.11"
// match "3.11.2").
func (c *Catalog) Lookup(name, version string) (*Entry, error) {
	e := c.byName[strings.ToLower(name)]
	if e == nil {
		return nil, fmt.Errorf("%w %q; known languages: %s", ErrUnknownLanguage, name, strings.Join(c.Names(), ", "))
	}
	if version != "" && version != "*" && e.Version != version && !strings.HasPrefix(e.Version, version+".") {
		return nil, fmt.Errorf("%w: %s %s is not available (have %s)", ErrUnknownLanguage, e.Name, version, e.Version)
	}
	if e.Unavailable != "" {
		return nil, fmt.Errorf("%w: %s cannot be provided: %s", ErrUnknownLanguage, e.Name, e.Unavailable)
	}
	return e, nil
}

// Names lists the names of the available languages.
func (c *Catalog) Names() []string {
	var n []string
	for _, e := range c.entries {
		if e.Unavailable == "" {
			n = append(n, e.Name)
		}
	}
	return n
}

// Base describes what every image starts from.
type Base struct {
	Suite   string   `json:"suite"`
	Variant string   `json:"variant"`
	Mirror  string   `json:"-"` // where packages come from, not what they are
	Extra   []string `json:"extra_packages,omitempty"`
}

// DefaultBase is Debian bookworm minbase.
var DefaultBase = Base{Suite: "bookworm", Variant: "minbase", Mirror: "http://deb.debian.org/debian"}

// ID is the content address of e's image on base: its layer's id, which
// covers the base layer's id, the builder version, the format and the
// packages. The mirror is not part of it: where packages come from does
// not change what they are.
func (e *Entry) ID(base Base, format string) string {
	return e.LayerID(baseID(base, format), format)
}
