package sandbox

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// prewarmStep is one program of a fresh-process test: what it runs and
// what a user must see.
type prewarmStep struct {
	name     string
	code     string
	files    map[string]string
	stdout   string // exact
	contains string // in stdout+stderr
	code3    int    // the run's exit code
	compile  bool   // the check is on the compile step (it fails)
	any      bool   // may or may not use the runtime (just after it was killed)
}

// Prewarmed runs restored from a snapshot behave as fresh processes of
// the language, one after another in one VM: no globals, modules,
// monkey-patches or pid carried over, errors and exit codes as a plain
// run gives them, a killed runtime followed by runs that still work; and
// two restores do not share their random numbers.
func TestPrewarmedRuntimesAreFresh(t *testing.T) {
	m, _ := newTestManager(t)
	defer noLeftovers(t, m)
	cases := []struct {
		lang   string
		random string // prints random numbers
		// restore for each step (from the one snapshot): a replacement
		// resident compiler takes longer to warm up than a compile.
		restoreEach bool
		steps       []prewarmStep
	}{
		{lang: "nodejs", random: `console.log(Math.random(), require("crypto").randomUUID())`, steps: []prewarmStep{
			{name: "patch", code: `globalThis.leak = 1; require("fs").leak = 1; Math.max = () => 0;
require("fs").writeFileSync("/tmp/pid", String(process.pid)); const { v } = require("./helper"); console.log(v);`,
				files: map[string]string{"helper.js": `exports.v = "one";`}, stdout: "one\n"},
			{name: "fresh", code: `const fs = require("fs");
console.log(typeof leak, fs.leak, Math.max(1, 2), require("./helper").v, fs.readFileSync("/tmp/pid", "utf8") !== String(process.pid));`,
				files: map[string]string{"helper.js": `exports.v = "two";`}, stdout: "undefined undefined 2 two true\n"},
			{name: "error", code: `throw new Error("boom")`, contains: "Error: boom", code3: 1},
			{name: "exit", code: `console.log("bye"); process.exit(3)`, stdout: "bye\n", code3: 3},
			{name: "kill the runtime", code: `process.kill(-1, "SIGKILL")`, any: true},
			{name: "after", code: `console.log("alive")`, stdout: "alive\n", any: true},
		}},
		{lang: "ruby", random: `puts rand, Random.new_seed`, steps: []prewarmStep{
			{name: "patch", code: "$leak = 1\nrequire 'json'\nrequire_relative 'helper'\nputs V\nFile.write('/tmp/pid', Process.pid.to_s)\nclass Integer; def +(o) = 0; end",
				files: map[string]string{"helper.rb": "V = 'one'"}, stdout: "one\n"},
			{name: "fresh", code: "require_relative 'helper'\np [$leak, 1 + 1, defined?(JSON), V, File.read('/tmp/pid') != Process.pid.to_s, __FILE__ == $0]",
				files: map[string]string{"helper.rb": "V = 'two'"}, stdout: "[nil, 2, nil, \"two\", true, true]\n"},
			{name: "error", code: `raise "boom"`, contains: "main.rb:1:in `<main>': boom (RuntimeError)", code3: 1},
			{name: "exit", code: "puts 'bye'\nexit 3", stdout: "bye\n", code3: 3},
			{name: "kill the runtime", code: `Process.kill(:KILL, -1) rescue nil`, any: true},
			{name: "after", code: `puts "alive"`, stdout: "alive\n", any: true},
		}},
		{lang: "typescript", random: `console.log(Math.random())`, restoreEach: true, steps: []prewarmStep{
			{name: "declare", code: "declare global { var leak: number }\nglobalThis.leak = 1;\nconsole.log(`n=${6 * 7}`);\nexport {};\n", stdout: "n=42\n"},
			{name: "fresh", code: "console.log(leak);\n", compile: true, contains: "Cannot find name 'leak'"},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.lang, func(t *testing.T) {
			e, err := m.catalog.Lookup(tc.lang, "")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.images.ForEntry(e, m.cfg.ImageFormat); err != nil {
				t.Skipf("%v (build it: firesandbox image build %s)", err, tc.lang)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
			defer cancel()
			run := func(vm *VM, s prewarmStep) (string, *RunResult) {
				t.Helper()
				files := []agentproto.File{{Path: e.File, Content: []byte(s.code)}}
				for p, c := range s.files {
					files = append(files, agentproto.File{Path: p, Content: []byte(c)})
				}
				var out, errb, cout bytes.Buffer
				res, err := m.execProgram(ctx, vm, e, "/tmp/box", files, nil, nil, agentproto.Limits{}, agentproto.Limits{},
					Streams{Stdout: &out, Stderr: &errb, CompileStdout: &cout, CompileStderr: &cout})
				if err != nil {
					t.Fatal(err)
				}
				step, warm := res.Run, res.Compile // a compiled language's runtime is its compiler
				if warm == nil {
					warm = res.Run
				}
				if s.compile || step == nil {
					step = res.Compile
				}
				if step == nil || (!warm.Prewarmed && !s.any) {
					t.Fatalf("%s: did not use the prewarmed runtime: %+v %+v\n%s%s%s\nconsole: %s", s.name, res.Compile, res.Run,
						cout.String(), out.String(), errb.String(), vm.Machine.Console(4096))
				}
				t.Logf("%s: compile %+v, run %+v", s.name, res.Compile, res.Run)
				all := cout.String() + out.String() + errb.String()
				if (s.contains == "" && out.String() != s.stdout) || !strings.Contains(all, s.contains) ||
					strings.Contains(all, "spare") || (!s.compile && step.Code != s.code3) {
					t.Fatalf("%s: exit %d, stdout %q, compile output %q, stderr %q", s.name, step.Code, out.String(), cout.String(), errb.String())
				}
				return out.String(), res
			}
			acquire := func() *VM {
				vm, err := m.Acquire(ctx, e, false)
				if err != nil {
					t.Fatal(err)
				}
				if !vm.Restored {
					t.Fatal("not restored from a snapshot")
				}
				return vm
			}
			vm := acquire()
			defer func() { vm.Close() }()
			first, _ := run(vm, prewarmStep{name: "random", code: tc.random, contains: "0."})
			for _, s := range tc.steps {
				if tc.restoreEach {
					vm.Close()
					vm = acquire()
				}
				run(vm, s)
			}
			vm2 := acquire()
			defer vm2.Close()
			if again, _ := run(vm2, prewarmStep{name: "random again", code: tc.random, contains: "0."}); again == first {
				t.Fatalf("two restores printed the same random numbers: %q", first)
			}
		})
	}
}
