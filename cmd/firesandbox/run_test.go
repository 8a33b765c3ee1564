package main

import (
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

func TestSplitRunArgs(t *testing.T) {
	tests := map[string]struct {
		args           []string
		lang, code     string
		file           string
		progArgs       []string
		flags          map[string]string // run flags expected after parsing
		errContains    string            // non-empty: want a usage error
		untouchedFlags []string          // run flags that must keep their default
	}{
		"code with args": {
			args: []string{"python", "-c", "print(1)", "a", "b"},
			lang: "python", code: "print(1)", progArgs: []string{"a", "b"},
		},
		"file with program flags": {
			args: []string{"python", "file.py", "--flag", "x"},
			lang: "python", file: "file.py", progArgs: []string{"--flag", "x"},
		},
		"program flag named like a run flag": {
			args: []string{"python", "file.py", "--timeout", "5", "--json"},
			lang: "python", file: "file.py", progArgs: []string{"--timeout", "5", "--json"},
			untouchedFlags: []string{"timeout", "json"},
		},
		"code whose args look like flags": {
			args: []string{"python", "-c", "import sys", "-c", "--stdin", "x"},
			lang: "python", code: "import sys", progArgs: []string{"-c", "--stdin", "x"},
			untouchedFlags: []string{"stdin"},
		},
		"stdin program": {
			args: []string{"python", "-"},
			lang: "python", file: "-",
		},
		"stdin program with args": {
			args: []string{"python", "-", "-v"},
			lang: "python", file: "-", progArgs: []string{"-v"},
		},
		"run flag after language": {
			args: []string{"python", "--stdin", "hi", "-c", "code"},
			lang: "python", code: "code", flags: map[string]string{"stdin": "hi"},
		},
		"run flag with =": {
			args: []string{"python", "--timeout=2s", "file.py"},
			lang: "python", file: "file.py", flags: map[string]string{"timeout": "2s"},
		},
		"several run flags": {
			args: []string{"python", "--json", "--procs", "8", "--cold", "--memory-limit=64", "-c", "x"},
			lang: "python", code: "x", flags: map[string]string{"json": "true", "procs": "8", "cold": "true", "memory-limit": "64"},
		},
		"double dash ends run flags": {
			args: []string{"python", "--timeout", "1s", "--", "file.py", "a"},
			lang: "python", file: "file.py", progArgs: []string{"a"}, flags: map[string]string{"timeout": "1s"},
		},
		"missing language": {args: nil, errContains: "LANGUAGE"},
		"missing program":  {args: []string{"python"}, errContains: "missing program"},
		"missing program after flags": {
			args: []string{"python", "--stdin", "hi"}, errContains: "missing program",
		},
		"-c without code":        {args: []string{"python", "-c"}, errContains: "-c needs the code"},
		"unknown long flag":      {args: []string{"python", "--bogus", "file.py"}, errContains: `"--bogus"`},
		"unknown short flag":     {args: []string{"python", "-x", "file.py"}, errContains: `"-x"`},
		"run flag without value": {args: []string{"python", "--timeout"}, errContains: "timeout"},
		"bad duration":           {args: []string{"python", "--timeout", "soon", "-c", "x"}, errContains: "soon"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cmd := newRunCmd(&globalFlags{})
			lang, code, file, progArgs, err := splitRunArgs(cmd, tc.args)
			if tc.errContains != "" {
				if !isUsage(err) {
					t.Fatalf("splitRunArgs(%q) = (%q, %q, %q, %q, %v), want a usage error", tc.args, lang, code, file, progArgs, err)
				}
				if !strings.Contains(err.Error(), tc.errContains) {
					t.Errorf("error %q does not mention %q", err, tc.errContains)
				}
				return
			}
			if err != nil {
				t.Fatalf("splitRunArgs(%q): %v", tc.args, err)
			}
			if lang != tc.lang || code != tc.code || file != tc.file || !slices.Equal(progArgs, tc.progArgs) {
				t.Errorf("splitRunArgs(%q) = lang %q code %q file %q args %q; want lang %q code %q file %q args %q",
					tc.args, lang, code, file, progArgs, tc.lang, tc.code, tc.file, tc.progArgs)
			}
			for name, want := range tc.flags {
				if got := cmd.Flags().Lookup(name).Value.String(); got != want {
					t.Errorf("--%s = %q, want %q", name, got, want)
				}
			}
			for _, name := range tc.untouchedFlags {
				if fl := cmd.Flags().Lookup(name); fl.Value.String() != fl.DefValue {
					t.Errorf("program argument set run flag --%s to %q", name, fl.Value.String())
				}
			}
		})
	}
}

// TestRunFlagsBeforeLanguage parses the command line as cobra does: run
// flags before LANGUAGE are cobra's, the rest is splitRunArgs'.
func TestRunFlagsBeforeLanguage(t *testing.T) {
	cmd := newRunCmd(&globalFlags{})
	if err := cmd.ParseFlags([]string{"--timeout", "3s", "python", "--stdin", "x", "file.py", "--timeout", "9s"}); err != nil {
		t.Fatal(err)
	}
	lang, _, file, progArgs, err := splitRunArgs(cmd, cmd.Flags().Args())
	if err != nil {
		t.Fatal(err)
	}
	if lang != "python" || file != "file.py" || !slices.Equal(progArgs, []string{"--timeout", "9s"}) {
		t.Errorf("got lang %q file %q args %q", lang, file, progArgs)
	}
	for name, want := range map[string]string{"timeout": "3s", "stdin": "x"} {
		if got := cmd.Flags().Lookup(name).Value.String(); got != want {
			t.Errorf("--%s = %q, want %q", name, got, want)
		}
	}
}

// TestRunUsageErrors checks mistakes that must be reported before any VM
// is started.
func TestRunUsageErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.py")
	tests := map[string]struct {
		args []string
		want string
	}{
		"stdin and stdin-file":  {[]string{"--stdin", "a", "--stdin-file", missing, "python", "-c", "x"}, "not both"},
		"missing program file":  {[]string{"python", missing}, "missing.py"},
		"missing stdin file":    {[]string{"python", "--stdin-file", missing, "-c", "x"}, "--stdin-file"},
		"negative timeout":      {[]string{"--timeout", "-1s", "python", "-c", "x"}, "negative"},
		"negative memory limit": {[]string{"python", "--memory-limit", "-5", "-c", "x"}, "negative"},
		"no language":           {[]string{}, "LANGUAGE"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			g := &globalFlags{dataDir: t.TempDir(), driver: "none"}
			cmd := newRunCmd(g)
			cmd.SetArgs(tc.args)
			cmd.SetOut(io.Discard)
			cmd.SetErr(io.Discard)
			cmd.SilenceUsage, cmd.SilenceErrors = true, true
			err := cmd.Execute()
			if !isUsage(err) {
				t.Fatalf("run %q = %v, want a usage error", tc.args, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	tests := map[string]struct {
		r    agentproto.ExitResult
		want int
	}{
		"ok":                        {agentproto.ExitResult{}, 0},
		"runtime error keeps code":  {agentproto.ExitResult{Code: 3, Status: agentproto.StatusRuntimeError}, 3},
		"timeout":                   {agentproto.ExitResult{Code: -1, Signal: "SIGKILL", Status: agentproto.StatusTimeout}, 124},
		"timeout without a signal":  {agentproto.ExitResult{Status: agentproto.StatusTimeout}, 124},
		"SIGKILL":                   {agentproto.ExitResult{Code: -1, Signal: "SIGKILL", Status: agentproto.StatusSignal}, 137},
		"SIGSEGV":                   {agentproto.ExitResult{Code: -1, Signal: "SIGSEGV", Status: agentproto.StatusSignal}, 139},
		"unknown signal name":       {agentproto.ExitResult{Code: -1, Signal: "SIGWHAT", Status: agentproto.StatusSignal}, 137},
		"output limit after exit 0": {agentproto.ExitResult{Code: 0, Status: agentproto.StatusStdoutLimit}, 137},
		"stderr limit after exit 0": {agentproto.ExitResult{Code: 0, Status: agentproto.StatusStderrLimit}, 137},
		"output limit, killed":      {agentproto.ExitResult{Code: -1, Signal: "SIGKILL", Status: agentproto.StatusStdoutLimit}, 137},
		"output limit, own code":    {agentproto.ExitResult{Code: 1, Status: agentproto.StatusStdoutLimit}, 137},
		"agent failure":             {agentproto.ExitResult{Status: agentproto.StatusInternal, Message: "cannot start"}, exitInternal},
		"agent failure, killed":     {agentproto.ExitResult{Code: -1, Signal: "SIGKILL", Status: agentproto.StatusInternal}, exitInternal},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := exitCode(&tc.r); got != tc.want {
				t.Errorf("exitCode(%+v) = %d, want %d", tc.r, got, tc.want)
			}
		})
	}
}

func TestDescribe(t *testing.T) {
	tests := map[string]struct {
		r    agentproto.ExitResult
		want string
	}{
		"message": {agentproto.ExitResult{Status: agentproto.StatusTimeout, Message: "wall-clock limit of 2s reached"}, ": wall-clock limit of 2s reached (TO)"},
		"signal":  {agentproto.ExitResult{Signal: "SIGSEGV", Status: agentproto.StatusSignal}, ": killed by SIGSEGV (SG)"},
		"code":    {agentproto.ExitResult{Code: 1, Status: agentproto.StatusRuntimeError}, ": exit code 1"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := describe(&tc.r); got != tc.want {
				t.Errorf("describe = %q, want %q", got, tc.want)
			}
		})
	}
}
