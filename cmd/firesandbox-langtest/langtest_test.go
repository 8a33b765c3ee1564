package main

import (
	"errors"
	"io/fs"
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/languages"
)

func TestJudge(t *testing.T) {
	three := 3
	ok := &agentproto.ExitResult{}
	re := func(code int) *agentproto.ExitResult {
		return &agentproto.ExitResult{Status: agentproto.StatusRuntimeError, Code: code}
	}
	for name, tc := range map[string]struct {
		check image.Check
		res   *sandbox.RunResult
		err   error
		out   outputs
		want  string // "" for a pass, else a word the reason has
	}{
		"hello passes":         {image.Check{Stdout: "hi\n"}, &sandbox.RunResult{Run: ok}, nil, outputs{stdout: "hi\n"}, ""},
		"wrong stdout":         {image.Check{Stdout: "hi\n"}, &sandbox.RunResult{Run: ok}, nil, outputs{stdout: "ho\n"}, "stdout"},
		"run failed":           {image.Check{Stdout: "hi\n"}, &sandbox.RunResult{Run: re(1)}, nil, outputs{stderr: "Traceback\n"}, "RE code 1"},
		"compile failed":       {image.Check{Stdout: "hi\n"}, &sandbox.RunResult{Compile: re(1)}, nil, outputs{compileStderr: "error: x\n"}, "compile"},
		"exit code 3":          {image.Check{Status: "RE", Exit: &three, Stdout: "bye\n"}, &sandbox.RunResult{Run: re(3)}, nil, outputs{stdout: "bye\n"}, ""},
		"exit code 1 for 3":    {image.Check{Status: "RE", Exit: &three}, &sandbox.RunResult{Run: re(1)}, nil, outputs{}, "exit code 1"},
		"exit 0 for an error":  {image.Check{Status: "RE"}, &sandbox.RunResult{Run: ok}, nil, outputs{}, "want RE"},
		"compile error":        {image.Check{Stage: "compile", Status: "RE", Contains: "undefined_name"}, &sandbox.RunResult{Compile: re(1)}, nil, outputs{compileStderr: "main.c:2: 'undefined_name' undeclared\n"}, ""},
		"compile error in out": {image.Check{Stage: "compile", Status: "RE", Contains: "undefined_name"}, &sandbox.RunResult{Compile: re(1)}, nil, outputs{compileStdout: "undefined_name?\n"}, ""},
		"compiled anyway":      {image.Check{Stage: "compile", Status: "RE"}, &sandbox.RunResult{Compile: ok, Run: ok}, nil, outputs{}, "want a compile error"},
		"no compile step":      {image.Check{Stage: "compile", Status: "RE"}, &sandbox.RunResult{Run: re(1)}, nil, outputs{}, "no compile step"},
		"missing words":        {image.Check{Status: "RE", Contains: "ZeroDivisionError"}, &sandbox.RunResult{Run: re(1)}, nil, outputs{stderr: "other\n"}, "does not contain"},
		"signal":               {image.Check{Status: "SG"}, &sandbox.RunResult{Run: &agentproto.ExitResult{Status: agentproto.StatusSignal, Signal: "SIGSEGV"}}, nil, outputs{}, ""},
		"manager error":        {image.Check{}, nil, errors.New("boot failed"), outputs{}, "boot failed"},
	} {
		t.Run(name, func(t *testing.T) {
			got := judge(tc.check, tc.res, tc.err, tc.out)
			if tc.want == "" && got != "" {
				t.Fatalf("judge = %q; want a pass", got)
			}
			if tc.want != "" && !strings.Contains(got, tc.want) {
				t.Fatalf("judge = %q; want a failure mentioning %q", got, tc.want)
			}
		})
	}
}

func TestSelectEntries(t *testing.T) {
	cat, err := image.LoadCatalog(languagesFS(t))
	if err != nil {
		t.Fatal(err)
	}
	keys := func(names ...string) string {
		es, err := selectEntries(cat, names)
		if err != nil {
			return "error: " + err.Error()
		}
		var k []string
		for _, e := range es {
			k = append(k, e.Key())
		}
		return strings.Join(k, " ")
	}
	if got := keys("python"); !strings.Contains(got, "python@3.11") || !strings.Contains(got, "python@3.13") {
		t.Errorf("python selects %s; want every version", got)
	}
	if got := keys("py@3.13"); got != "python@3.13.5" {
		t.Errorf("py@3.13 selects %s", got)
	}
	if got := keys("zig"); !strings.HasPrefix(got, "zig@") {
		t.Errorf("an unavailable language is still selected (for its row): %s", got)
	}
	if got := keys("cobolx"); !strings.HasPrefix(got, "error") {
		t.Errorf("an unknown name selects %s", got)
	}
}

func languagesFS(t *testing.T) fs.FS {
	t.Helper()
	return languages.FS
}
