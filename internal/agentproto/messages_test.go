package agentproto

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateRelPath(t *testing.T) {
	tests := map[string]struct {
		path string
		ok   bool
	}{
		"valid nested":          {"src/main.c", true},
		"valid plain":           {"main.py", true},
		"valid dotfile":         {".bashrc", true},
		"valid dots in name":    {"a..b", true},
		"parent":                {"../x", false},
		"escapes after descent": {"a/../../b", false},
		"parent in the middle":  {"a/../b", false},
		"only parent":           {"..", false},
		"absolute":              {"/etc/passwd", false},
		"double slash":          {"a//b", false},
		"leading dot":           {"./a", false},
		"only dot":              {".", false},
		"trailing slash":        {"a/", false},
		"empty":                 {"", false},
		"NUL byte":              {"a\x00b", false},
		"huge path":             {strings.Repeat("a/", MaxPathBytes/2) + "b", false},
		"longest allowed":       {strings.Repeat("a", MaxPathBytes), true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := ValidateRelPath(tc.path)
			if tc.ok && err != nil {
				t.Fatalf("ValidateRelPath(%.40q) = %v, want nil", tc.path, err)
			}
			if !tc.ok && !errors.Is(err, ErrMalformed) {
				t.Fatalf("ValidateRelPath(%.40q) = %v, want ErrMalformed", tc.path, err)
			}
		})
	}
}

func TestExecRequestValidate(t *testing.T) {
	valid := func() ExecRequest {
		return ExecRequest{
			ID:     1,
			Argv:   []string{"python3", "main.py"},
			Env:    []string{"LANG=C.UTF-8", "EMPTY="},
			Dir:    "/tmp/work",
			Files:  []File{{Path: "main.py", Content: []byte("print(1)")}, {Path: "src/main.c"}},
			Limits: Limits{WallMillis: 1000, OutputBytes: 1024, Procs: 8, MemoryBytes: 1 << 20},
		}
	}
	tests := map[string]struct {
		edit    func(r *ExecRequest)
		ok      bool
		errText string // a word the error must contain, to tell the user what is wrong
	}{
		"valid":                    {func(r *ExecRequest) {}, true, ""},
		"zero limits are defaults": {func(r *ExecRequest) { r.Limits = Limits{} }, true, ""},
		"no dir":                   {func(r *ExecRequest) { r.Dir = "" }, true, ""},
		"argv empty":               {func(r *ExecRequest) { r.Argv = nil }, false, "argv"},
		"argv0 empty":              {func(r *ExecRequest) { r.Argv = []string{"", "x"} }, false, "argv"},
		"NUL in argument":          {func(r *ExecRequest) { r.Argv = append(r.Argv, "a\x00b") }, false, "NUL"},
		"env without =":            {func(r *ExecRequest) { r.Env = []string{"PATH"} }, false, "KEY=VALUE"},
		"NUL in env":               {func(r *ExecRequest) { r.Env = []string{"A=\x00"} }, false, "KEY=VALUE"},
		"too many arguments":       {func(r *ExecRequest) { r.Argv = make([]string, MaxArgs+1); r.Argv[0] = "x" }, false, "arguments"},
		"arguments too long":       {func(r *ExecRequest) { r.Argv = append(r.Argv, strings.Repeat("x", MaxArgBytes)) }, false, "bytes"},
		"relative dir":             {func(r *ExecRequest) { r.Dir = "work" }, false, "working directory"},
		"negative wall":            {func(r *ExecRequest) { r.Limits.WallMillis = -1 }, false, "negative"},
		"negative output":          {func(r *ExecRequest) { r.Limits.OutputBytes = -1 }, false, "negative"},
		"negative procs":           {func(r *ExecRequest) { r.Limits.Procs = -5 }, false, "negative"},
		"negative memory":          {func(r *ExecRequest) { r.Limits.MemoryBytes = -1 << 20 }, false, "negative"},
		"too many files":           {func(r *ExecRequest) { r.Files = manyFiles(MaxFiles + 1) }, false, "files"},
		"escaping file":            {func(r *ExecRequest) { r.Files = append(r.Files, File{Path: "../../etc/passwd"}) }, false, "leaves"},
		"absolute file":            {func(r *ExecRequest) { r.Files = []File{{Path: "/etc/passwd"}} }, false, "absolute"},
		"MaxFiles files is ok":     {func(r *ExecRequest) { r.Files = manyFiles(MaxFiles) }, true, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := valid()
			tc.edit(&r)
			err := r.Validate()
			if tc.ok {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Validate = %v, want ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tc.errText) {
				t.Errorf("Validate = %q, want it to mention %q", err, tc.errText)
			}
		})
	}
}

func manyFiles(n int) []File {
	fs := make([]File, n)
	for i := range fs {
		fs[i].Path = "f" + strings.Repeat("x", i%50) + string(rune('a'+i%26))
	}
	return fs
}

func TestExitResultWall(t *testing.T) {
	r := ExitResult{WallMillis: 1500}
	if got := r.Wall().Seconds(); got != 1.5 {
		t.Errorf("Wall() = %vs, want 1.5s", got)
	}
}
