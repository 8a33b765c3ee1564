package image

import (
	"errors"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/languages"
)

// langTOML returns a valid catalog file for name; extra lines are added to
// the top-level table.
func langTOML(name, version string, extra ...string) string {
	return "name = \"" + name + "\"\n" +
		"version = \"" + version + "\"\n" +
		"packages = [\"" + name + "-interp\"]\n" +
		"file = \"main.src\"\n" +
		"run = [\"" + name + "\", \"main.src\"]\n" +
		strings.Join(extra, "\n") + "\n" +
		"[test]\ncode = \"print(1)\"\nstdout = \"1\\n\"\n"
}

func TestEmbeddedCatalog(t *testing.T) {
	c, err := LoadCatalog(languages.FS)
	if err != nil {
		t.Fatalf("LoadCatalog(languages.FS): %v", err)
	}
	files, err := fs.Glob(languages.FS, "*.toml")
	if err != nil {
		t.Fatal(err)
	}
	entries := c.Entries()
	if len(entries) == 0 || len(entries) != len(files) {
		t.Fatalf("catalog has %d entries for %d files", len(entries), len(files))
	}
	if !slices.IsSortedFunc(entries, func(a, b *Entry) int { return strings.Compare(a.Name, b.Name) }) {
		t.Errorf("Entries() not sorted by name")
	}
	for _, e := range entries {
		if err := e.Validate(); err != nil {
			t.Errorf("%s: %v", e.Name, err)
		}
		if e.Unavailable != "" {
			if _, err := c.Lookup(e.Name, e.Version); err == nil {
				t.Errorf("%s is unavailable but Lookup returns it", e.Name)
			}
			continue
		}
		for _, n := range append([]string{e.Name}, e.Aliases...) {
			got, err := c.Lookup(n, e.Version)
			if err != nil || got != e {
				t.Errorf("Lookup(%q, %q) = %v, %v; want entry %s", n, e.Version, got, err, e.Name)
			}
		}
	}
	py, err := c.Lookup("python", "3")
	if err != nil {
		t.Fatalf("Lookup(python, 3): %v", err)
	}
	if py.Test.Stdout == "" || len(py.Test.Args) == 0 {
		t.Errorf("python test program lost its expected output or args: %+v", py.Test)
	}
}

func TestEntriesReturnsACopy(t *testing.T) {
	c, err := LoadCatalog(fstest.MapFS{
		"a.toml": {Data: []byte(langTOML("a", "1"))},
		"b.toml": {Data: []byte(langTOML("b", "1"))},
	})
	if err != nil {
		t.Fatal(err)
	}
	es := c.Entries()
	es[0], es[1] = es[1], es[0]
	if got := c.Entries()[0].Name; got != "a" {
		t.Errorf("reordering Entries()'s result changed the catalog: first is %q", got)
	}
}

func TestParseEntryAcceptsLimitsAndCompile(t *testing.T) {
	e, err := ParseEntry("java.toml", []byte(langTOML("java", "17.0.12",
		`compile = ["javac", "Main.java"]`,
		`env = ["JAVA_TOOL_OPTIONS=-Xss1m"]`,
		"[limits]",
		"wall_ms = 20000",
		"output_bytes = 2048",
		"procs = 256",
		"memory_bytes = 1073741824",
	)))
	if err != nil {
		t.Fatalf("ParseEntry: %v", err)
	}
	want := agentproto.Limits{WallMillis: 20000, OutputBytes: 2048, Procs: 256, MemoryBytes: 1 << 30}
	if e.Limits != want {
		t.Errorf("limits = %+v, want %+v", e.Limits, want)
	}
	if !slices.Equal(e.Compile, []string{"javac", "Main.java"}) || !slices.Equal(e.Env, []string{"JAVA_TOOL_OPTIONS=-Xss1m"}) {
		t.Errorf("compile = %q, env = %q", e.Compile, e.Env)
	}
}

func TestParseEntryRejects(t *testing.T) {
	tests := map[string]struct {
		file string
		data string
		want []string // every one must appear in the error
	}{
		"unknown key": {
			"ruby.toml", langTOML("ruby", "3.1", `pakages = ["ruby"]`),
			[]string{"unknown key", "pakages"},
		},
		"unknown key in test": {
			"ruby.toml", langTOML("ruby", "3.1") + "stdot = \"x\"\n",
			[]string{"unknown key", "test.stdot"},
		},
		"name not the file name": {
			"ruby.toml", langTOML("python", "3.11.2"),
			[]string{`"python"`, "file name"},
		},
		"missing run": {
			"ruby.toml", strings.Replace(langTOML("ruby", "3.1"), "run = [\"ruby\", \"main.src\"]\n", "", 1),
			[]string{"run is empty"},
		},
		"empty run word": {
			"ruby.toml", strings.Replace(langTOML("ruby", "3.1"), `run = ["ruby", "main.src"]`, `run = [""]`, 1),
			[]string{"run is empty"},
		},
		"uppercase package": {
			"ruby.toml", strings.Replace(langTOML("ruby", "3.1"), `"ruby-interp"`, `"Ruby"`, 1),
			[]string{`package "Ruby"`},
		},
		"package with shell": {
			"ruby.toml", strings.Replace(langTOML("ruby", "3.1"), `"ruby-interp"`, `"ruby; rm -rf /"`, 1),
			[]string{"not a Debian package name"},
		},
		"one-letter package": {
			"ruby.toml", strings.Replace(langTOML("ruby", "3.1"), `"ruby-interp"`, `"r"`, 1),
			[]string{`package "r"`},
		},
		"no packages": {
			"ruby.toml", strings.Replace(langTOML("ruby", "3.1"), `["ruby-interp"]`, `[]`, 1),
			[]string{"packages, npm and oci are all empty"},
		},
		"missing test program": {
			"ruby.toml", strings.Replace(langTOML("ruby", "3.1"), `code = "print(1)"`, ``, 1),
			[]string{"test.code is empty"},
		},
		"file in a directory": {
			"ruby.toml", strings.Replace(langTOML("ruby", "3.1"), `file = "main.src"`, `file = "src/main.rb"`, 1),
			[]string{`file "src/main.rb"`},
		},
		"file escapes": {
			"ruby.toml", strings.Replace(langTOML("ruby", "3.1"), `file = "main.src"`, `file = "../main.rb"`, 1),
			[]string{`file "../main.rb"`},
		},
		"bad alias": {
			"ruby.toml", langTOML("ruby", "3.1", `aliases = ["Ruby 3"]`),
			[]string{`alias "Ruby 3"`},
		},
		"env without =": {
			"ruby.toml", langTOML("ruby", "3.1", `env = ["GEM_HOME"]`),
			[]string{`env "GEM_HOME"`},
		},
		"negative limit": {
			"ruby.toml", langTOML("ruby", "3.1") + "[limits]\nprocs = -1\n",
			[]string{"negative"},
		},
		"several problems at once": {
			"ruby.toml", strings.NewReplacer(
				`run = ["ruby", "main.src"]`, `run = []`,
				`"ruby-interp"`, `"RUBY"`,
				`code = "print(1)"`, ``,
				`version = "3.1"`, `version = ""`,
			).Replace(langTOML("ruby", "3.1")),
			[]string{"run is empty", `package "RUBY"`, "test.code is empty", "version is empty"},
		},
		"not TOML": {
			"ruby.toml", "name = ruby\n",
			[]string{"ruby.toml"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e, err := ParseEntry(tc.file, []byte(tc.data))
			if err == nil {
				t.Fatalf("ParseEntry accepted %+v", e)
			}
			if !strings.Contains(err.Error(), tc.file) {
				t.Errorf("error %q does not name the file %s", err, tc.file)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestUnavailableEntry(t *testing.T) {
	const why = "Debian bookworm has no package for it"
	data := "name = \"cobol\"\nversion = \"3.2\"\nunavailable = \"" + why + "\"\n"
	e, err := ParseEntry("cobol.toml", []byte(data))
	if err != nil {
		t.Fatalf("ParseEntry of an unavailable entry without packages: %v", err)
	}
	if e.Unavailable != why {
		t.Errorf("Unavailable = %q", e.Unavailable)
	}
	c, err := LoadCatalog(fstest.MapFS{
		"cobol.toml":  {Data: []byte(data)},
		"python.toml": {Data: []byte(langTOML("python", "3.11.2"))},
	})
	if err != nil {
		t.Fatalf("LoadCatalog: %v", err)
	}
	if len(c.Entries()) != 2 {
		t.Errorf("unavailable entry not listed: %d entries", len(c.Entries()))
	}
	_, err = c.Lookup("cobol", "")
	if !errors.Is(err, ErrUnknownLanguage) || !strings.Contains(err.Error(), why) {
		t.Errorf("Lookup(cobol) = %v, want ErrUnknownLanguage with the reason %q", err, why)
	}
	if names := c.Names(); !slices.Equal(names, []string{"python"}) {
		t.Errorf("Names() = %q, want only the available [python]", names)
	}
}

func testCatalog(t *testing.T) *Catalog {
	t.Helper()
	c, err := LoadCatalog(fstest.MapFS{
		"python.toml": {Data: []byte(langTOML("python", "3.11.2", `aliases = ["py", "python3"]`))},
		"go.toml":     {Data: []byte(langTOML("go", "1.19.8", `aliases = ["golang"]`))},
		"c.toml":      {Data: []byte(langTOML("c", "12.2.0", `aliases = ["gcc"]`))},
		"README.md":   {Data: []byte("not an entry")},
	})
	if err != nil {
		t.Fatalf("LoadCatalog: %v", err)
	}
	return c
}

func TestLookup(t *testing.T) {
	c := testCatalog(t)
	tests := map[string]struct {
		name, version string
		want          string // entry name; "" for an error
	}{
		"by name":                 {"python", "", "python"},
		"by alias":                {"py", "", "python"},
		"by other alias":          {"golang", "", "go"},
		"name in capitals":        {"Python", "", "python"},
		"any version":             {"python", "*", "python"},
		"major version":           {"python", "3", "python"},
		"major.minor":             {"py", "3.11", "python"},
		"exact version":           {"python", "3.11.2", "python"},
		"prefix not at a dot":     {"python", "3.1", ""},
		"longer than the version": {"python", "3.11.2.1", ""},
		"other major":             {"python", "2", ""},
		"partial number":          {"python", "3.11.", ""},
		"unknown language":        {"cobol", "", ""},
		"empty name":              {"", "", ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e, err := c.Lookup(tc.name, tc.version)
			if tc.want == "" {
				if !errors.Is(err, ErrUnknownLanguage) {
					t.Fatalf("Lookup(%q, %q) = %v, %v; want ErrUnknownLanguage", tc.name, tc.version, e, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Lookup(%q, %q): %v", tc.name, tc.version, err)
			}
			if e.Name != tc.want {
				t.Errorf("Lookup(%q, %q) = %s, want %s", tc.name, tc.version, e.Name, tc.want)
			}
		})
	}
}

func TestLookupErrorsHelpTheUser(t *testing.T) {
	c := testCatalog(t)
	_, err := c.Lookup("cobol", "")
	for _, n := range []string{`"cobol"`, "c", "go", "python"} {
		if err == nil || !strings.Contains(err.Error(), n) {
			t.Errorf("unknown-language error %v does not mention %s", err, n)
		}
	}
	_, err = c.Lookup("py", "3.1")
	if err == nil || !strings.Contains(err.Error(), "3.11.2") {
		t.Errorf("wrong-version error %v does not say which version exists", err)
	}
}

func TestLoadCatalogDuplicateNames(t *testing.T) {
	tests := map[string]struct {
		fs   fstest.MapFS
		want string
	}{
		"alias used twice": {fstest.MapFS{
			"python.toml": {Data: []byte(langTOML("python", "3.11.2", `aliases = ["py"]`))},
			"pypy.toml":   {Data: []byte(langTOML("pypy", "7.3", `aliases = ["py"]`))},
		}, `"py"`},
		"alias is another's name": {fstest.MapFS{
			"python.toml": {Data: []byte(langTOML("python", "3.11.2"))},
			"pypy.toml":   {Data: []byte(langTOML("pypy", "7.3", `aliases = ["python"]`))},
		}, `"python"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := LoadCatalog(tc.fs)
			if err == nil {
				t.Fatalf("LoadCatalog accepted a duplicate name: %q", c.Names())
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %s", err, tc.want)
			}
		})
	}
}

func TestLoadCatalogReportsEveryBadFile(t *testing.T) {
	_, err := LoadCatalog(fstest.MapFS{
		"ok.toml":    {Data: []byte(langTOML("ok", "1"))},
		"perl.toml":  {Data: []byte(langTOML("perl", "5", "colour = 1"))},
		"rust.toml":  {Data: []byte(langTOML("rust", ""))},
		"other.toml": {Data: []byte(langTOML("notother", "1"))},
	})
	if err == nil {
		t.Fatal("LoadCatalog accepted bad files")
	}
	for _, f := range []string{"perl.toml", "rust.toml", "other.toml"} {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not mention %s", err, f)
		}
	}
}

func TestEntryID(t *testing.T) {
	entry := func(pkgs ...string) *Entry {
		e, err := ParseEntry("python.toml", []byte(langTOML("python", "3.11.2")))
		if err != nil {
			t.Fatal(err)
		}
		e.Packages = pkgs
		return e
	}
	base := DefaultBase
	id := entry("python3").ID(base, "squashfs")
	if !strings.HasPrefix(id, "python-") || len(id) != len("python-")+16 {
		t.Errorf("ID = %q, want python-<16 hex digits>", id)
	}
	if again := entry("python3").ID(DefaultBase, "squashfs"); again != id {
		t.Errorf("same inputs gave %q then %q", id, again)
	}

	otherMirror := base
	otherMirror.Mirror = "http://mirror.example.org/debian"
	if got := entry("python3").ID(otherMirror, "squashfs"); got != id {
		t.Errorf("changing only the mirror changed the ID: %q -> %q", id, got)
	}

	otherSuite := base
	otherSuite.Suite = "trixie"
	otherVariant := base
	otherVariant.Variant = "buildd"
	extra := base
	extra.Extra = []string{"ca-certificates"}
	changes := map[string]string{
		"packages":    entry("python3", "python3-numpy").ID(base, "squashfs"),
		"format":      entry("python3").ID(base, "erofs"),
		"base suite":  entry("python3").ID(otherSuite, "squashfs"),
		"variant":     entry("python3").ID(otherVariant, "squashfs"),
		"extra":       entry("python3").ID(extra, "squashfs"),
		"package set": entry("python3-minimal").ID(base, "squashfs"),
	}
	seen := map[string]string{id: "original"}
	for what, got := range changes {
		if got == id {
			t.Errorf("changing the %s did not change the ID %q", what, id)
		}
		if prev, dup := seen[got]; dup && prev != what {
			t.Errorf("changing the %s and the %s gave the same ID %q", prev, what, got)
		}
		seen[got] = what
	}
}
