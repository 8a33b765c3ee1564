package languages_test

import (
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/languages"
)

// want is every language the catalog must list, available or with the
// reason it is not.
var want = []string{
	"awk", "bash", "bun", "c", "clojure", "code-interpreter", "cobol", "cpp", "crystal", "d", "dart",
	"deno", "dotnet", "elixir", "erlang", "fortran", "go", "groovy", "haskell",
	"java", "jq", "julia", "kotlin", "lisp", "lua", "nasm", "nasm64", "nim", "nodejs",
	"ocaml", "octave", "pascal", "perl", "php", "prolog", "python", "r", "ruby",
	"rust", "scala", "scheme", "sqlite", "swift", "tcl", "typescript", "zig",
}

func load(t *testing.T) *image.Catalog {
	t.Helper()
	cat, err := image.LoadCatalog(languages.FS)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

func TestCatalogListsEveryLanguage(t *testing.T) {
	var got []string
	for _, e := range load(t).Entries() {
		if !slices.Contains(got, e.Name) {
			got = append(got, e.Name)
		}
	}
	for _, n := range want {
		if !slices.Contains(got, n) {
			t.Errorf("language %s is missing", n)
		}
	}
	for _, n := range got {
		if !slices.Contains(want, n) {
			t.Errorf("language %s is not in this test's list; add it", n)
		}
	}
}

// LoadCatalog already refuses duplicates; this says which entries clash,
// and also catches an alias repeated inside one entry or naming itself.
func TestAliasesAreUnique(t *testing.T) {
	owner := map[string]string{}
	for _, e := range load(t).Entries() {
		if !e.Default() { // versions share their language's names
			continue
		}
		for _, n := range append([]string{e.Name}, e.Aliases...) {
			if o, dup := owner[n]; dup {
				t.Errorf("%q is used by both %s and %s", n, o, e.Name)
			}
			owner[n] = e.Name
		}
	}
}

// Every available language has every conformance program, and those
// that expect a compile error expect it where the language compiles.
func TestEveryLanguageHasTheConformancePrograms(t *testing.T) {
	for _, e := range load(t).Entries() {
		if e.Unavailable != "" {
			continue
		}
		t.Run(e.Key(), func(t *testing.T) {
			have := map[string]image.Check{}
			for _, c := range e.Checks {
				have[c.Name] = c
			}
			for _, n := range image.RequiredChecks {
				if _, ok := have[n]; !ok {
					t.Errorf("no %q check", n)
				}
			}
			if c, ok := have["compile-error"]; ok && (c.Stage == "compile") != (len(e.Compile) > 0) {
				t.Errorf("compile-error has stage %q, but the language compiles: %v", c.Stage, len(e.Compile) > 0)
			}
			if c, ok := have["exit-code"]; ok && (c.Exit == nil || *c.Exit != 3 || c.Status != "RE") {
				t.Errorf("exit-code does not expect exit code 3")
			}
			if c, ok := have["modules"]; ok && len(c.Files) == 0 {
				t.Errorf("modules has no second file")
			}
			if c, ok := have["stdin"]; ok && c.Stdin == "" {
				t.Errorf("stdin sends no input")
			}
			if c, ok := have["args"]; ok && len(c.Args) < 2 {
				t.Errorf("args passes fewer than two arguments")
			}
		})
	}
}

func TestEntries(t *testing.T) {
	for _, e := range load(t).Entries() {
		t.Run(e.Key(), func(t *testing.T) {
			if e.Unavailable != "" {
				if len(e.Unavailable) < 20 {
					t.Errorf("unavailable reason %q is too short to say why", e.Unavailable)
				}
				return
			}
			if e.Test.Stdout == "" {
				t.Error("test.stdout is empty: the test must check output")
			}
			if strings.TrimSpace(e.Test.Code) == "" {
				t.Error("test.code is empty")
			}
			if len(e.Compile) == 0 {
				return
			}
			// A compiled language runs what the compiler produced, never
			// the source file again.
			for _, w := range e.Run {
				if w == e.File {
					t.Errorf("run %q names the source %s; want the compiled output", e.Run, e.File)
				}
			}
			if out, ok := strings.CutPrefix(e.Run[0], "./"); ok {
				if !strings.Contains(strings.Join(e.Compile, " "), out) {
					t.Errorf("run %q starts %s, which compile %q does not produce", e.Run, e.Run[0], e.Compile)
				}
			} else if !producedBy(e) {
				t.Errorf("run %q runs nothing that compile %q names", e.Run, e.Compile)
			}
		})
	}
}

// producedBy says whether some argument of run (past the interpreter, e.g.
// "main.jar" in java -jar main.jar, or "Main" for javac's Main.class) is
// named by the compile command or derives from the source file's name.
func producedBy(e *image.Entry) bool {
	compile := strings.Join(e.Compile, " ")
	stem := strings.TrimSuffix(e.File, path.Ext(e.File))
	for _, w := range e.Run[1:] {
		if strings.HasPrefix(w, "-") || w == "." {
			continue
		}
		if strings.Contains(compile, w) || strings.TrimSuffix(w, path.Ext(w)) == stem {
			return true
		}
	}
	return false
}
