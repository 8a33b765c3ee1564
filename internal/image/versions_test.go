package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"testing/fstest"
)

func versionsCatalog(t *testing.T) *Catalog {
	t.Helper()
	c, err := LoadCatalog(fstest.MapFS{
		"python.toml":      {Data: []byte(langTOML("python", "3.11.2", `aliases = ["py"]`))},
		"python@3.13.toml": {Data: []byte(langTOML("python", "3.13.5", `suite = "trixie"`))},
		"python@3.9.toml":  {Data: []byte(langTOML("python", "3.9.2", `unavailable = "not packaged in any suite this host reaches"`))},
		"nodejs.toml":      {Data: []byte(langTOML("nodejs", "18.20.4"))},
		"nodejs@20.toml":   {Data: []byte(langTOML("nodejs", "20.19.2", `suite = "trixie"`))},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Piston's version selector picks among a language's versions: "*" and
// prefixes take the newest that matches, a request without a version
// (native API, CLI) the default file's.
func TestLookupPicksAVersion(t *testing.T) {
	c := versionsCatalog(t)
	for _, tc := range []struct{ name, version, want string }{
		{"python", "", "3.11.2"},
		{"py", "", "3.11.2"},
		{"python", "*", "3.13.5"},
		{"py", "3", "3.13.5"},
		{"python", "3.11", "3.11.2"},
		{"python", "3.13.5", "3.13.5"},
		{"nodejs", "18", "18.20.4"},
		{"nodejs", "*", "20.19.2"},
		{"nodejs", "20.19", "20.19.2"},
	} {
		e, err := c.Lookup(tc.name, tc.version)
		if err != nil || e.Version != tc.want {
			t.Errorf("Lookup(%q, %q) = %v, %v; want version %s", tc.name, tc.version, e, err, tc.want)
		}
	}
	_, err := c.Lookup("python", "3.9")
	if !errors.Is(err, ErrUnknownLanguage) || !strings.Contains(err.Error(), "not packaged") {
		t.Errorf("an unavailable version: %v; want its reason", err)
	}
	_, err = c.Lookup("python", "2")
	if err == nil || !strings.Contains(err.Error(), "3.13.5") || !strings.Contains(err.Error(), "3.11.2") {
		t.Errorf("a missing version: %v; want the versions there are", err)
	}
	ms, err := c.Match("python", "3")
	if err != nil || len(ms) != 2 || ms[0].Version != "3.13.5" || ms[1].Version != "3.11.2" {
		t.Errorf("Match(python, 3) = %v, %v; want 3.13.5 then 3.11.2 (the unavailable 3.9 left out)", ms, err)
	}
	if got := strings.Join(c.Names(), ","); got != "nodejs,python" {
		t.Errorf("Names() = %s; want each language once", got)
	}
	es := c.Entries()
	if len(es) != 5 || es[2].Key() != "python@3.11.2" || !es[2].Default() || es[3].Key() != "python@3.13.5" {
		var keys []string
		for _, e := range es {
			keys = append(keys, e.Key())
		}
		t.Errorf("Entries() = %v; want by name, default first, then newest", keys)
	}
	// Versions of one language are different images.
	a, _ := c.Lookup("python", "3.11")
	b, _ := c.Lookup("python", "3.13")
	if a.ID(DefaultBase, FormatSquashFS) == b.ID(DefaultBase, FormatSquashFS) {
		t.Error("two versions share an image id")
	}
	if b.BaseFor(DefaultBase).Suite != "trixie" || a.BaseFor(DefaultBase).Suite != "bookworm" {
		t.Error("a trixie entry does not sit on a trixie base")
	}
}

func TestVersionFilesRules(t *testing.T) {
	for name, files := range map[string]fstest.MapFS{
		"a version without the default": {"ruby@3.3.toml": {Data: []byte(langTOML("ruby", "3.3.8"))}},
		"aliases in a version file": {
			"ruby.toml":     {Data: []byte(langTOML("ruby", "3.1.2"))},
			"ruby@3.3.toml": {Data: []byte(langTOML("ruby", "3.3.8", `aliases = ["rb3"]`))},
		},
		"the same version twice": {
			"ruby.toml":     {Data: []byte(langTOML("ruby", "3.1.2"))},
			"ruby@3.1.toml": {Data: []byte(langTOML("ruby", "3.1.2"))},
		},
		"a bad label":       {"ruby.toml": {Data: []byte(langTOML("ruby", "3.1.2"))}, "ruby@A B.toml": {Data: []byte(langTOML("ruby", "3.3"))}},
		"a name mismatch":   {"ruby.toml": {Data: []byte(langTOML("ruby", "3.1.2"))}, "ruby@3.3.toml": {Data: []byte(langTOML("perl", "3.3"))}},
		"an unknown suite":  {"ruby.toml": {Data: []byte(langTOML("ruby", "3.1.2", `suite = "sid"`))}},
		"npm without a pin": {"bun.toml": {Data: []byte(langTOML("bun", "1", `npm = ["@oven/bun-linux-x64"]`))}},
		"oci with packages": {"julia.toml": {Data: []byte(langTOML("julia", "1.11", `oci = "julia:1.11"`))}},
		"a tiny vm":         {"ruby.toml": {Data: []byte(langTOML("ruby", "3.1.2", "[vm]\nmemory_mib = 64"))}},
	} {
		if _, err := LoadCatalog(files); err == nil {
			t.Errorf("%s: catalog loaded", name)
		}
	}
}

func TestShapeAndStepLimits(t *testing.T) {
	e, err := ParseEntry("java.toml", []byte(langTOML("java", "17", "[vm]\nvcpus = 2\nmemory_mib = 1024\n[limits]\nwall_ms = 20000\nprocs = 256")))
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Shape(Shape{VCPUs: 1, MemoryMiB: 512}); got != (Shape{2, 1024}) {
		t.Errorf("java's shape on a 1x512 server = %+v; want 2x1024", got)
	}
	if got := e.Shape(Shape{VCPUs: 4, MemoryMiB: 2048}); got != (Shape{4, 2048}) {
		t.Errorf("java's shape on a 4x2048 server = %+v; a language never lowers the server's", got)
	}
	if l := e.StepLimits(Slowdown("kvm")); l.WallMillis != 20000 || l.Procs != 256 {
		t.Errorf("KVM limits = %+v; want the catalog's", l)
	}
	if l := e.StepLimits(Slowdown("tcg")); l.WallMillis != 20000*TCGSlowdown || l.Procs != 256 {
		t.Errorf("TCG limits = %+v; want the wall limit scaled by %v", l, TCGSlowdown)
	}
	plain, _ := ParseEntry("sh.toml", []byte(langTOML("sh", "5")))
	if l := plain.StepLimits(1); l.WallMillis != KVMWallMillis {
		t.Errorf("default wall = %d; want %d", l.WallMillis, KVMWallMillis)
	}
	slow, _ := ParseEntry("x.toml", []byte(langTOML("x", "1", "[limits]\nwall_ms = 3000000")))
	if l := slow.StepLimits(50); l.WallMillis != MaxWallMillis {
		t.Errorf("scaled wall = %d; want it capped at %d", l.WallMillis, MaxWallMillis)
	}
	if Slowdown("firecracker") != 1 || Slowdown("") != 1 {
		t.Error("only TCG is slow")
	}
}

// Adding kinds of source must not change the ids of images that use none
// of them: images already built stay valid.
func TestPlainEntryIDUnchanged(t *testing.T) {
	e, _ := ParseEntry("python.toml", []byte(langTOML("python", "3.11.2")))
	withSetup, _ := ParseEntry("python.toml", []byte(langTOML("python", "3.11.2", `setup = ["true"]`)))
	backports, _ := ParseEntry("python.toml", []byte(langTOML("python", "3.11.2", `suite = "bookworm-backports"`)))
	id := e.ID(DefaultBase, FormatSquashFS)
	if id == withSetup.ID(DefaultBase, FormatSquashFS) || id == backports.ID(DefaultBase, FormatSquashFS) {
		t.Error("setup or a backports suite does not change the id")
	}
	// The id as it was computed before suites, npm and setup existed.
	b, _ := json.Marshal(struct {
		Builder  string   `json:"builder"`
		Parent   string   `json:"parent"`
		Format   string   `json:"format"`
		Packages []string `json:"packages"`
	}{BuilderVersion, baseID(DefaultBase, FormatSquashFS), FormatSquashFS, e.Packages})
	h := sha256.Sum256(b)
	if want := "python-" + hex.EncodeToString(h[:8]); id != want {
		t.Errorf("id %s; want %s, as images already built have it", id, want)
	}
}
