package judge0

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/firesandbox/firesandbox/internal/image"
)

// MultiFileID is Judge0's "Multi-file program": every file comes in
// additional_files, with `compile` and `run` scripts at the archive's root.
const MultiFileID = 89

// languageIDs gives every catalog language the Judge0 CE ids that name
// it, so a client that hard-codes an id keeps working. Ids 43-89 are
// Judge0 CE 1.13.1's (db/languages/active.rb); 90-111 are the newer
// versions of the same languages that Judge0 CE 1.14 added (as listed by
// Judge0's Python SDK). An id names a compiler version there; here every
// id of a language runs the one version the catalog has, and /languages
// says which. Languages Judge0 CE does not have get ids from 1001 up,
// fixed here so that they never move. The first id is the language's
// main one.
//
// Judge0 CE ids with no language here: 43 Plain Text, 44 Executable, 47
// Basic (FBC), 70 Python 2, 75/76 C and C++ (Clang), 79 Objective-C, 84
// Visual Basic.Net, 87 F#, 96 JavaFX, 110 C (Clang).
var languageIDs = map[string]struct {
	// display is Judge0's name for the language, with %s for the version.
	display string
	ids     []int
}{
	"nasm64":     {"Assembly (NASM %s)", []int{45}}, // Judge0's NASM is x86-64
	"bash":       {"Bash (%s)", []int{46}},
	"c":          {"C (GCC %s)", []int{50, 48, 49, 103}},
	"dotnet":     {"C# (.NET %s)", []int{51}},
	"cpp":        {"C++ (GCC %s)", []int{54, 52, 53, 105}},
	"lisp":       {"Common Lisp (SBCL %s)", []int{55}},
	"d":          {"D (GDC %s)", []int{56}},
	"elixir":     {"Elixir (%s)", []int{57}},
	"erlang":     {"Erlang (OTP %s)", []int{58}},
	"fortran":    {"Fortran (GFortran %s)", []int{59}},
	"go":         {"Go (%s)", []int{60, 95, 107}},
	"haskell":    {"Haskell (GHC %s)", []int{61}},
	"java":       {"Java (OpenJDK %s)", []int{62, 91}},
	"nodejs":     {"JavaScript (Node.js %s)", []int{63, 93, 102}},
	"lua":        {"Lua (%s)", []int{64}},
	"ocaml":      {"OCaml (%s)", []int{65}},
	"octave":     {"Octave (%s)", []int{66}},
	"pascal":     {"Pascal (FPC %s)", []int{67}},
	"php":        {"PHP (%s)", []int{68, 98}},
	"prolog":     {"Prolog (SWI-Prolog %s)", []int{69}}, // Judge0 has GNU Prolog
	"python":     {"Python (%s)", []int{71, 92, 109}},
	"ruby":       {"Ruby (%s)", []int{72}},
	"rust":       {"Rust (%s)", []int{73, 108}},
	"typescript": {"TypeScript (%s)", []int{74, 94, 101}},
	"cobol":      {"COBOL (GnuCOBOL %s)", []int{77}},
	"kotlin":     {"Kotlin (%s)", []int{78, 111}},
	"r":          {"R (%s)", []int{80, 99}},
	"scala":      {"Scala (%s)", []int{81}},
	"sqlite":     {"SQL (SQLite %s)", []int{82}},
	"swift":      {"Swift (%s)", []int{83}},
	"perl":       {"Perl (%s)", []int{85}},
	"clojure":    {"Clojure (%s)", []int{86}},
	"groovy":     {"Groovy (%s)", []int{88}},
	"dart":       {"Dart (%s)", []int{90}},
	// Not in Judge0 CE.
	"awk":              {"AWK (GNU Awk %s)", []int{1001}},
	"crystal":          {"Crystal (%s)", []int{1002}},
	"jq":               {"jq (%s)", []int{1003}},
	"nim":              {"Nim (%s)", []int{1004}},
	"scheme":           {"Scheme (Guile %s)", []int{1005}},
	"tcl":              {"Tcl (%s)", []int{1006}},
	"bun":              {"TypeScript (Bun %s)", []int{1007}},
	"deno":             {"TypeScript (Deno %s)", []int{1008}},
	"julia":            {"Julia (%s)", []int{1009}},
	"zig":              {"Zig (%s)", []int{1010}},
	"code-interpreter": {"Python (%s, numpy, pandas, matplotlib)", []int{1011}},
	"nasm":             {"Assembly (NASM %s, 32-bit)", []int{1012}},
}

// language is a Judge0 id resolved against the catalog: what the id
// runs here.
type language struct {
	ID    int
	Name  string       // Judge0-style display name, with our version
	Entry *image.Entry // nil for the multi-file program
}

// project says whether the language is the multi-file program.
func (l *language) project() bool { return l.ID == MultiFileID }

// langTable resolves ids to the catalog's installed languages.
type langTable struct {
	byID   map[int]*language
	sorted []*language // by name, then id, as Judge0 lists them
}

func newLangTable(cat Catalog, installed func(*image.Entry) bool) *langTable {
	ls := &langTable{byID: map[int]*language{}}
	add := func(l *language) {
		ls.byID[l.ID] = l
		ls.sorted = append(ls.sorted, l)
	}
	for _, e := range cat.Entries() {
		info, ok := languageIDs[e.Name]
		if !ok || !e.Default() || e.Unavailable != "" || (installed != nil && !installed(e)) { // an id runs the default version
			continue
		}
		for _, id := range info.ids {
			add(&language{ID: id, Name: fmt.Sprintf(info.display, e.Version), Entry: e})
		}
	}
	add(&language{ID: MultiFileID, Name: "Multi-file program"})
	sort.SliceStable(ls.sorted, func(i, j int) bool {
		if ls.sorted[i].Name != ls.sorted[j].Name {
			return ls.sorted[i].Name < ls.sorted[j].Name
		}
		return ls.sorted[i].ID < ls.sorted[j].ID
	})
	return ls
}

func (ls *langTable) get(id int) *language { return ls.byID[id] }

// byExtension finds the installed language whose program file has ext
// (".c"); the first by catalog name wins.
func (ls *langTable) byExtension(ext string) *image.Entry {
	var best *image.Entry
	for _, l := range ls.byID {
		if l.Entry != nil && strings.EqualFold(extension(l.Entry.File), ext) && (best == nil || l.Entry.Name < best.Name) {
			best = l.Entry
		}
	}
	return best
}

func (ls *langTable) byName(name string) *image.Entry {
	for _, l := range ls.byID {
		if l.Entry != nil && l.Entry.Name == name {
			return l.Entry
		}
	}
	return nil
}

func extension(name string) string {
	if i := strings.LastIndexByte(name, '.'); i > 0 && !strings.Contains(name[i:], "/") {
		return name[i:]
	}
	return ""
}

// command renders argv as Judge0 shows a command; insertAt, if >= 0,
// puts Judge0's "%s" (where compiler options go) before that word.
func command(argv []string, insertAt int) *string {
	if len(argv) == 0 {
		return nil
	}
	var words []string
	for i, a := range argv {
		if i == insertAt {
			words = append(words, "%s")
		}
		if strings.ContainsAny(a, " \t\n'\"\\$&;|<>()*?") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		words = append(words, a)
	}
	s := strings.Join(words, " ")
	return &s
}

func (h *Handler) handleLanguages(w http.ResponseWriter, r *http.Request) {
	out := make([]object, 0, len(h.langs.sorted))
	for _, l := range h.langs.sorted {
		out = append(out, object{{"id", l.ID}, {"name", l.Name}})
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) handleAllLanguages(w http.ResponseWriter, r *http.Request) {
	out := make([]object, 0, len(h.langs.sorted))
	for _, l := range h.langs.sorted {
		out = append(out, object{{"id", l.ID}, {"name", l.Name}, {"is_archived", false}})
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) handleLanguage(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.Atoi(r.PathValue("id"))
	l := h.langs.get(id)
	if err != nil || l == nil {
		writeNotFound(w)
		return
	}
	o := object{{"id", l.ID}, {"name", l.Name}, {"is_archived", false}}
	if l.Entry == nil {
		o = append(o, member{"source_file", nil}, member{"compile_cmd", nil}, member{"run_cmd", nil})
	} else {
		o = append(o, member{"source_file", l.Entry.File}, member{"compile_cmd", command(l.Entry.Compile, compilerOptionsAt(l.Entry.Compile))},
			member{"run_cmd", command(l.Entry.Run, -1)})
	}
	writeJSON(w, http.StatusOK, o)
}
