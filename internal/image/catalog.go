package image

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// ErrUnknownLanguage means no catalog entry matches a language name.
var ErrUnknownLanguage = errors.New("unknown language")

// Entry is one language of the catalog (languages/<name>.toml, or
// languages/<name>@<label>.toml for a further version of the same
// language).
type Entry struct {
	Name    string   `toml:"name" json:"name"`
	Version string   `toml:"version" json:"version"`
	Aliases []string `toml:"aliases" json:"aliases,omitempty"`
	// Packages are Debian packages installed into the image.
	Packages []string `toml:"packages" json:"packages"`
	// Suite is the Debian suite the packages come from: "" (the default
	// base, bookworm), a backports suite of the base ("bookworm-backports":
	// installed with apt's -t on the bookworm base), or another release
	// ("trixie": the image gets a base layer of that release).
	Suite string `toml:"suite" json:"suite,omitempty"`
	// NPM are npm packages (name@exact-version) installed with npm into
	// /usr/local, for toolchains that ship as npm packages (bun, deno,
	// typescript). Install scripts do not run.
	NPM []string `toml:"npm" json:"npm,omitempty"`
	// OCI, if set, is an image reference (docker.io/library/julia:1.11):
	// the language's root filesystem is that image's layers, flattened
	// with their whiteouts, instead of a Debian base.
	OCI string `toml:"oci" json:"oci,omitempty"`
	// Setup are shell commands run as root in the image once its packages
	// are in (symlinks, caches a compiler would otherwise rebuild on every
	// run). Their effect is part of the layer.
	Setup []string `toml:"setup" json:"setup,omitempty"`
	// File is the name the main source file gets in the working directory.
	File string `toml:"file" json:"file"`
	// Compile, if set, runs once before Run; a non-zero exit stops there.
	Compile []string `toml:"compile" json:"compile,omitempty"`
	// Run is the command; the program's arguments are appended.
	Run []string `toml:"run" json:"run"`
	// Env is added to the environment of both steps.
	Env []string `toml:"env" json:"env,omitempty"`
	// Limits override the defaults for this language (e.g. a JVM needs
	// more memory and processes). WallMillis is what a step may take on
	// KVM; StepLimits scales it for slower accelerators.
	Limits agentproto.Limits `toml:"limits" json:"limits"`
	// VM is the machine this language needs; zero fields take the
	// server's defaults.
	VM Shape `toml:"vm" json:"vm,omitzero"`
	// Unavailable, if set, says why this language cannot be built here;
	// such an entry is listed but never built.
	Unavailable string `toml:"unavailable" json:"unavailable,omitempty"`
	Test        Test   `toml:"test" json:"test"`
	// Checks are the conformance programs `make test-languages` runs
	// (print, stdin, args, modules, errors, exit codes).
	Checks []Check `toml:"check" json:"checks,omitempty"`
	// Prewarm, if set, is a runtime started in the template VM before its
	// snapshot that forks a fresh process per run (see agentproto's
	// PrewarmRequest).
	Prewarm *Prewarm `toml:"prewarm" json:"prewarm,omitempty"`

	label string // "" for <name>.toml, else the part after @
}

// Shape is the VM a language asks for.
type Shape struct {
	VCPUs     int `toml:"vcpus" json:"vcpus,omitempty"`
	MemoryMiB int `toml:"memory_mib" json:"memory_mib,omitempty"`
}

// Shape returns the VM this language needs, with zero fields filled from
// def (the server's defaults). A language never gets less than def: its
// shape only raises what a VM has.
func (e *Entry) Shape(def Shape) Shape {
	s := def
	s.VCPUs = max(s.VCPUs, e.VM.VCPUs)
	s.MemoryMiB = max(s.MemoryMiB, e.VM.MemoryMiB)
	return s
}

// Key identifies an entry among the versions of its language:
// "python@3.11.2".
func (e *Entry) Key() string { return e.Name + "@" + e.Version }

// Default says whether this is the version a request without a version
// gets (the entry in <name>.toml).
func (e *Entry) Default() bool { return e.label == "" }

// Prewarm is a language's prewarmed runtime: a program (File, with Code as
// its content) started with Run that serves fork requests on fd 3, or,
// with Spares, that many copies of it, each of which becomes one run.
type Prewarm struct {
	Run  []string `toml:"run" json:"run"`
	File string   `toml:"file" json:"file"`
	Code string   `toml:"code" json:"code"`
	// Spares is for runtimes that cannot fork (Node.js: V8 is
	// multi-threaded): the agent keeps this many started, loaded copies
	// waiting, hands each one run, and starts another in its place (see
	// agentproto.PrewarmRequest). 0 means a fork server.
	Spares int `toml:"spares" json:"spares,omitempty"`
	// Accept lists the command lines (as prefixes of argv) that spares
	// run; an exec that matches none runs the ordinary way without
	// waiting for one (typescript's spares compile, and do not run
	// node main.js).
	Accept [][]string `toml:"accept" json:"accept,omitempty"`
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

// Check is one conformance program of a language: what a user sends and
// what they must get back. A check passes when the step it expects to end
// the run (compile for Stage "compile", else run) ends with Status and,
// if set, Exit; Stdout, if set, is the run's exact stdout; Contains, if
// set, must appear in that step's stdout or stderr.
type Check struct {
	Name  string      `toml:"name" json:"name"`
	Code  string      `toml:"code" json:"code"`
	Files []CheckFile `toml:"files" json:"files,omitempty"`
	Args  []string    `toml:"args" json:"args,omitempty"`
	Stdin string      `toml:"stdin" json:"stdin,omitempty"`
	// Stage is "run" (default) or "compile": the step that must end it.
	Stage string `toml:"stage" json:"stage,omitempty"`
	// Status is the expected status of that step in agentproto's
	// vocabulary: "" (exit 0), "RE" (non-zero exit), "SG" (signal).
	Status   string `toml:"status" json:"status,omitempty"`
	Exit     *int   `toml:"exit" json:"exit,omitempty"`
	Stdout   string `toml:"stdout" json:"stdout,omitempty"`
	Contains string `toml:"contains" json:"contains,omitempty"`
}

// CheckFile is a further file of a check, beside the program.
type CheckFile struct {
	Path    string `toml:"path" json:"path"`
	Content string `toml:"content" json:"content"`
}

// RequiredChecks are the conformance programs every available language
// has; "compile-error" is a compile stage for compiled languages and a
// run-stage error (a syntax error) for the others, and "modules" is two
// files, one using the other, in the language's own way.
var RequiredChecks = []string{"hello", "stdin", "args", "modules", "compile-error", "runtime-error", "exit-code"}

// Suites are the Debian suites an entry may name besides the default
// base's: each is a release (whose base layer the image sits on) and,
// for a backports suite, the suite apt installs from with -t.
var Suites = map[string]Suite{
	"bookworm-backports": {Release: "bookworm", Backports: "bookworm-backports"},
	"trixie":             {Release: "trixie"},
	"trixie-backports":   {Release: "trixie", Backports: "trixie-backports"},
}

// Suite is where an entry's Debian packages come from.
type Suite struct {
	Release   string // the base layer's release
	Backports string // "" or the backports suite packages are taken from
}

// BaseFor returns the base layer e's image sits on, given the default
// base b (whose mirror and variant it keeps).
func (e *Entry) BaseFor(b Base) Base {
	if s, ok := Suites[e.Suite]; ok {
		b.Suite = s.Release
	}
	return b
}

// backports is the suite apt installs e's packages from with -t, or "".
func (e *Entry) backports() string { return Suites[e.Suite].Backports }

var (
	nameRe    = regexp.MustCompile(`^[a-z][a-z0-9+#-]{0,31}$`)
	packageRe = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]{1,63}$`)
	labelRe   = regexp.MustCompile(`^[a-z0-9][a-z0-9.+-]{0,31}$`)
	// npmRe is a (possibly scoped) npm package name at an exact version.
	npmRe = regexp.MustCompile(`^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*@[0-9]+\.[0-9]+\.[0-9]+[0-9A-Za-z.+-]*$`)
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
		if len(e.Packages) == 0 && len(e.NPM) == 0 && e.OCI == "" {
			add("packages, npm and oci are all empty (set unavailable = \"why\" if no source has it)")
		}
		for _, p := range e.Packages {
			if !packageRe.MatchString(p) {
				add("package %q is not a Debian package name", p)
			}
		}
		if _, ok := Suites[e.Suite]; e.Suite != "" && !ok {
			add("suite %q: want one of %s", e.Suite, strings.Join(slices.Sorted(maps.Keys(Suites)), ", "))
		}
		for _, p := range e.NPM {
			if !npmRe.MatchString(p) {
				add("npm package %q: want name@exact-version", p)
			}
		}
		if e.OCI != "" {
			if _, err := parseOCIRef(e.OCI); err != nil {
				add("oci %q: %v", e.OCI, err)
			}
			if len(e.Packages) > 0 || len(e.NPM) > 0 || e.Suite != "" {
				add("oci images take no packages, npm or suite: the image is the whole root")
			}
		}
		for _, c := range e.Setup {
			if strings.TrimSpace(c) == "" {
				add("setup has an empty command")
			}
		}
		if e.VM.VCPUs < 0 || e.VM.VCPUs > 32 || e.VM.MemoryMiB < 0 || (e.VM.MemoryMiB != 0 && e.VM.MemoryMiB < 128) || e.VM.MemoryMiB > 64<<10 {
			add("vm: %d vCPUs and %d MiB: want 1-32 vCPUs and 128-65536 MiB", e.VM.VCPUs, e.VM.MemoryMiB)
		}
		seen := map[string]bool{}
		for i, c := range e.Checks {
			if c.Name == "" || seen[c.Name] {
				add("check %d: want a unique name (got %q)", i, c.Name)
			}
			seen[c.Name] = true
			if c.Code == "" {
				add("check %s: code is empty", c.Name)
			}
			switch c.Stage {
			case "", "run":
			case "compile":
				if len(e.Compile) == 0 {
					add("check %s: stage compile, but %s has no compile step", c.Name, e.Name)
				}
			default:
				add("check %s: stage %q: want run or compile", c.Name, c.Stage)
			}
			switch agentproto.Status(c.Status) {
			case agentproto.StatusOK, agentproto.StatusRuntimeError, agentproto.StatusSignal, agentproto.StatusTimeout:
			default:
				add("check %s: status %q: want \"\", RE, SG or TO", c.Name, c.Status)
			}
			for _, f := range c.Files {
				if err := agentproto.ValidateRelPath(f.Path); err != nil || f.Path == e.File {
					add("check %s: file %q: want a relative path other than %s", c.Name, f.Path, e.File)
				}
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
			if p.Spares < 0 || p.Spares > agentproto.MaxSpares {
				add("prewarm.spares %d: want 0 (a fork server) to %d", p.Spares, agentproto.MaxSpares)
			}
			if len(p.Accept) > 0 && p.Spares == 0 {
				add("prewarm.accept is for spares")
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
// so a typo never silently drops a setting. The file is <name>.toml (the
// language's default version) or <name>@<label>.toml (another version,
// which takes its aliases from the default).
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
	stem, label, versioned := strings.Cut(strings.TrimSuffix(path.Base(name), ".toml"), "@")
	if e.Name != stem {
		return nil, fmt.Errorf("%s: name %q does not match the file name", name, e.Name)
	}
	if versioned {
		if !labelRe.MatchString(label) {
			return nil, fmt.Errorf("%s: version label %q: want lowercase letters, digits and dots", name, label)
		}
		if len(e.Aliases) > 0 {
			return nil, fmt.Errorf("%s: aliases belong in %s.toml: every version of a language shares them", name, e.Name)
		}
		e.label = label
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &e, nil
}

// Catalog is the set of languages, each in one or more versions.
type Catalog struct {
	entries []*Entry
	// byName maps a name or alias to the language's versions, the
	// default first and then newest first.
	byName map[string][]*Entry
}

// LoadCatalog parses every *.toml in fsys.
func LoadCatalog(fsys fs.FS) (*Catalog, error) {
	files, err := fs.Glob(fsys, "*.toml")
	if err != nil {
		return nil, err
	}
	c := &Catalog{byName: map[string][]*Entry{}}
	var errs []error
	versions := map[string][]*Entry{}
	var defaults []*Entry
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
		for _, o := range versions[e.Name] {
			if o.Version == e.Version {
				errs = append(errs, fmt.Errorf("%s: %s %s is also defined by another file", f, e.Name, e.Version))
			}
		}
		versions[e.Name] = append(versions[e.Name], e)
		if e.Default() {
			defaults = append(defaults, e)
		}
		c.entries = append(c.entries, e)
	}
	owner := map[string]string{}
	for _, d := range defaults {
		for _, n := range append([]string{d.Name}, d.Aliases...) {
			if o, dup := owner[n]; dup {
				errs = append(errs, fmt.Errorf("%s.toml: name or alias %q is also used by %s", d.Name, n, o))
			}
			owner[n] = d.Name
		}
	}
	for name, vs := range versions {
		if _, ok := owner[name]; !ok {
			errs = append(errs, fmt.Errorf("%s: versions of %s without %s.toml, the default", vs[0].Key(), name, name))
			continue
		}
		sort.SliceStable(vs, func(i, j int) bool {
			if vs[i].Default() != vs[j].Default() {
				return vs[i].Default()
			}
			return compareVersions(vs[i].Version, vs[j].Version) > 0
		})
	}
	for n, name := range owner {
		c.byName[n] = versions[name]
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("language catalog: %w", err)
	}
	sort.Slice(c.entries, func(i, j int) bool {
		a, b := c.entries[i], c.entries[j]
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if a.Default() != b.Default() {
			return a.Default()
		}
		return compareVersions(a.Version, b.Version) > 0
	})
	return c, nil
}

// Entries returns every entry, sorted by name, each language's default
// version first.
func (c *Catalog) Entries() []*Entry { return slices.Clone(c.entries) }

// Lookup finds a language by name or alias and picks a version: for ""
// the default (<name>.toml); for "*" the newest; else the newest whose
// version is version or starts with it at a dot ("3" and "3.11" match
// "3.11.2"). Unavailable entries are never returned.
func (c *Catalog) Lookup(name, version string) (*Entry, error) {
	es, err := c.Match(name, version)
	if err != nil {
		return nil, err
	}
	return es[0], nil
}

// Match returns every available version of a language that version
// selects, best first (see Lookup), so a caller can take the first one
// that is installed, as Piston does with its installed runtimes.
func (c *Catalog) Match(name, version string) ([]*Entry, error) {
	vs := c.byName[strings.ToLower(name)]
	if len(vs) == 0 {
		return nil, fmt.Errorf("%w %q; known languages: %s", ErrUnknownLanguage, name, strings.Join(c.Names(), ", "))
	}
	var out []*Entry
	var have []string
	for _, e := range vs {
		have = append(have, e.Version)
		if version == "" || version == "*" || e.Version == version || strings.HasPrefix(e.Version, version+".") {
			out = append(out, e)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s %s is not available (have %s)", ErrUnknownLanguage, vs[0].Name, version, strings.Join(have, ", "))
	}
	if version != "" { // a selector: newest first, the default no longer preferred
		out = slices.Clone(out)
		sort.SliceStable(out, func(i, j int) bool { return compareVersions(out[i].Version, out[j].Version) > 0 })
	}
	avail := slices.DeleteFunc(slices.Clone(out), func(e *Entry) bool { return e.Unavailable != "" })
	if len(avail) == 0 {
		return nil, fmt.Errorf("%w: %s cannot be provided: %s", ErrUnknownLanguage, out[0].Name, out[0].Unavailable)
	}
	return avail, nil
}

// Names lists the names of the languages with at least one available
// version.
func (c *Catalog) Names() []string {
	var n []string
	for _, e := range c.entries {
		if e.Unavailable == "" && !slices.Contains(n, e.Name) {
			n = append(n, e.Name)
		}
	}
	return n
}

// compareVersions orders dotted versions numerically where both parts are
// numbers ("3.13.5" > "3.11.2", "20.19" > "18.20"), else as strings.
func compareVersions(a, b string) int {
	as, bs := strings.FieldsFunc(a, isVersionSep), strings.FieldsFunc(b, isVersionSep)
	for i := 0; i < len(as) && i < len(bs); i++ {
		x, errx := strconv.Atoi(as[i])
		y, erry := strconv.Atoi(bs[i])
		switch {
		case errx == nil && erry == nil && x != y:
			return cmp.Compare(x, y)
		case (errx != nil || erry != nil) && as[i] != bs[i]:
			return strings.Compare(as[i], bs[i])
		}
	}
	return cmp.Compare(len(as), len(bs))
}

func isVersionSep(r rune) bool { return r == '.' || r == '-' || r == '+' || r == '~' }

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
// covers the base layer's id (of the release e's suite names), the
// builder version, the format and what goes into the layer. The mirror
// is not part of it: where packages come from does not change what they
// are.
func (e *Entry) ID(base Base, format string) string {
	if e.OCI != "" {
		return e.ociLayerID(format)
	}
	return e.LayerID(baseID(e.BaseFor(base), format), format)
}

// KVMWallMillis is the wall-clock limit of a step on KVM when neither
// the request nor the language sets one (the agent's own default).
const KVMWallMillis = 15_000

// MaxWallMillis is the longest default a step gets after scaling: the
// agent refuses more.
const MaxWallMillis = 3_600_000

// TCGSlowdown is how much slower a guest runs under TCG (software
// emulation) than under KVM, for scaling default limits: measured here,
// python's start is 12x and pure computation 16x slower, JIT-compiling
// runtimes more; 10 keeps a program that takes seconds on KVM out of TO
// without letting a stuck one hold a VM for hours.
const TCGSlowdown = 10.0

// Slowdown is the factor default limits are scaled by on an accelerator:
// 1 for "kvm" (and Firecracker, which always has KVM), TCGSlowdown for
// "tcg".
func Slowdown(accel string) float64 {
	if accel == "tcg" {
		return TCGSlowdown
	}
	return 1
}

// StepLimits returns the limits a compile or run step of e gets when the
// request sets none: the language's (or KVMWallMillis), with the
// wall-clock limit multiplied by slowdown (see Slowdown) and capped at
// MaxWallMillis. Limits a request sets are not scaled: merge them over
// this result field by field, so a user's explicit limit is honoured
// exactly.
func (e *Entry) StepLimits(slowdown float64) agentproto.Limits {
	l := e.Limits
	if l.WallMillis == 0 {
		l.WallMillis = KVMWallMillis
	}
	if slowdown > 1 {
		l.WallMillis = int64(min(float64(l.WallMillis)*slowdown, MaxWallMillis))
	}
	return l
}
