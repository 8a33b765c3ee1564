package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// catalogPrewarm is the [prewarm] table of a catalog entry.
type catalogPrewarm struct {
	Run    []string   `toml:"run"`
	File   string     `toml:"file"`
	Code   string     `toml:"code"`
	Spares int        `toml:"spares"`
	Accept [][]string `toml:"accept"`
}

// startCatalogRuntime starts the prewarmed runtime of languages/NAME.toml
// in a host agent (skipping without bin), with the runtime's file in dir.
func startCatalogRuntime(t *testing.T, name, bin string, cfg Config) (*agentproto.Client, string) {
	t.Helper()
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("needs %s", bin)
	}
	var e struct {
		Env     []string       `toml:"env"`
		Prewarm catalogPrewarm `toml:"prewarm"`
	}
	if _, err := toml.DecodeFile(filepath.Join("../../languages", name+".toml"), &e); err != nil {
		t.Fatal(err)
	}
	if e.Prewarm.Code == "" {
		t.Fatalf("%s.toml has no prewarm", name)
	}
	c := startAgent(t, cfg)
	dir := t.TempDir()
	argv := append([]string{bin}, e.Prewarm.Run[1:]...)
	for i, a := range argv {
		argv[i] = strings.ReplaceAll(a, "/tmp/.runtime", dir)
	}
	if err := c.Prewarm(ctx10(t), agentproto.PrewarmRequest{
		Argv: argv, Dir: dir, Env: e.Env, Spares: e.Prewarm.Spares, Accept: e.Prewarm.Accept,
		Files: []agentproto.File{{Path: e.Prewarm.File, Content: []byte(e.Prewarm.Code)}},
	}); err != nil {
		t.Fatal(err)
	}
	return c, dir
}

// freshRun is one prewarmed run of a fresh-process test.
type freshRun struct {
	name   string
	files  map[string]string
	args   []string
	stdin  string
	env    []string
	stdout string // exact, if set
	stderr string // contained, if set
	code   int
	cold   bool // must not use the runtime (it declines)
	any    bool // may use it or not
}

// checkFresh runs each step as a prewarmed exec of argv in one agent, in
// order, and checks what a user would see.
func checkFresh(t *testing.T, c *agentproto.Client, argv []string, steps []freshRun) {
	t.Helper()
	for _, s := range steps {
		dir := t.TempDir()
		var files []agentproto.File
		for p, content := range s.files {
			files = append(files, agentproto.File{Path: p, Content: []byte(content)})
		}
		r := run(t, c, agentproto.ExecRequest{Argv: append(append([]string{}, argv...), s.args...), Dir: dir,
			Env: s.env, Stdin: []byte(s.stdin), Files: files, Prewarmed: true})
		if r.Prewarmed == s.cold && !s.any {
			t.Fatalf("%s: prewarmed %v, want %v (stdout %q, stderr %q)", s.name, r.Prewarmed, !s.cold, r.stdout, r.stderr)
		}
		if (s.stdout != "" || s.stderr == "") && r.stdout != s.stdout {
			t.Fatalf("%s: stdout %q, want %q (stderr %q)", s.name, r.stdout, s.stdout, r.stderr)
		}
		if !strings.Contains(r.stderr, s.stderr) || strings.Contains(r.stderr, "spare") {
			t.Fatalf("%s: stderr %q, want it to contain %q and not name the runtime", s.name, r.stderr, s.stderr)
		}
		if r.Code != s.code {
			t.Fatalf("%s: exit code %d, want %d (stderr %q)", s.name, r.Code, s.code, r.stderr)
		}
	}
}

// Node.js runs prewarmed are fresh processes: each sees its own pid,
// globals, module cache, builtins, environment and files, and behaves as
// `node main.js` does on stdin, arguments, errors and exit codes.
func TestNodeSparesAreFresh(t *testing.T) {
	c, dir := startCatalogRuntime(t, "nodejs", "/usr/bin/node", Config{})
	const pidFile = "/tmp/.firesandbox-node-spare-test-pid"
	defer os.Remove(pidFile)
	checkFresh(t, c, []string{"node", "main.js"}, []freshRun{
		{name: "first", args: []string{"x", "two words"}, stdin: "line\n", env: []string{"GREETING=hi"},
			files: map[string]string{
				"main.js": `const fs = require("fs");
globalThis.leak = 1; require("fs").leak = 1; Math.max = () => 42;
require("./helper"); require.cache[require.resolve("fs")] = { exports: {} };
fs.writeFileSync("` + pidFile + `", String(process.pid));
console.log(process.argv.slice(1).join("|").replace(process.cwd(), "."), fs.readFileSync(0, "utf8").trim(),
  process.env.GREETING, require.main === module, typeof Math.random());`,
				"helper.js": `module.exports = "one";`,
			},
			stdout: "./main.js|x|two words line hi true number\n"},
		{name: "second", files: map[string]string{
			"main.js": `const fs = require("fs");
console.log(typeof leak, fs.leak, Math.max(1, 2), require("./helper"), process.env.GREETING,
  String(process.pid) !== fs.readFileSync("` + pidFile + `", "utf8"), fs.existsSync("extra.txt"));`,
			"helper.js": `module.exports = "two";`,
		}, stdout: "undefined undefined 2 two undefined true false\n"},
		{name: "error", files: map[string]string{"main.js": `throw new Error("boom");`},
			stderr: "Error: boom", code: 1},
		{name: "syntax", files: map[string]string{"main.js": "function (\n"}, stderr: "SyntaxError", code: 1},
		{name: "exit", files: map[string]string{"main.js": `console.log("bye"); process.exit(3);`}, stdout: "bye\n", code: 3},
		{name: "async", files: map[string]string{"main.js": `setTimeout(() => console.log("later"), 10); process.on("exit", (c) => console.log("exit", c));`},
			stdout: "later\nexit 0\n"},
		{name: "startup env", env: []string{"NODE_OPTIONS=--no-warnings"}, cold: true,
			files: map[string]string{"main.js": `console.log("cold");`}, stdout: "cold\n"},
		// A run that kills every spare it finds: the next run still works.
		{name: "killer", env: []string{"SPARES=" + dir}, files: map[string]string{"main.js": killSpares}},
		{name: "after kill", files: map[string]string{"main.js": `console.log("alive");`}, stdout: "alive\n", any: true},
		{name: "replaced", files: map[string]string{"main.js": `console.log("again");`}, stdout: "again\n", any: true},
	})
}

// killSpares is a program that kills the processes whose command line
// names $SPARES (the runtime's directory), other than itself.
const killSpares = `const fs = require("fs");
for (const p of fs.readdirSync("/proc")) {
  if (!/^[0-9]+$/.test(p) || Number(p) === process.pid) continue;
  try {
    if (fs.readFileSync("/proc/" + p + "/cmdline", "utf8").includes(process.env.SPARES)) process.kill(Number(p), "SIGKILL");
  } catch {}
}`

// TypeScript's resident compiler gives what tsc gives: for each program,
// a prewarmed compile prints the same diagnostics, exits with the same
// code and emits the same JavaScript as tsc run the ordinary way; and a
// compile does not see what an earlier one compiled.
func TestTypeScriptResidentCompiler(t *testing.T) {
	if _, err := os.Stat("/usr/local/lib/node_modules/typescript/bin/tsc"); err != nil {
		t.Skip("needs typescript in /usr/local/lib/node_modules (the typescript image has it)")
	}
	var e struct {
		Compile []string `toml:"compile"`
		Env     []string `toml:"env"`
	}
	if _, err := toml.DecodeFile("../../languages/typescript.toml", &e); err != nil {
		t.Fatal(err)
	}
	c, _ := startCatalogRuntime(t, "typescript", "/usr/bin/node", Config{})
	compile := func(files map[string]string, argv []string, prewarmed bool) (result, string) {
		dir := t.TempDir()
		var fs []agentproto.File
		for p, content := range files {
			fs = append(fs, agentproto.File{Path: p, Content: []byte(content)})
		}
		r := run(t, c, agentproto.ExecRequest{Argv: argv, Dir: dir, Env: e.Env, Files: fs, Prewarmed: prewarmed})
		js, _ := os.ReadFile(filepath.Join(dir, "main.js"))
		r.stdout = strings.ReplaceAll(r.stdout, dir, "DIR")
		return r, string(js)
	}
	cases := []struct {
		name  string
		files map[string]string
		argv  []string
	}{
		{"ok", map[string]string{"main.ts": "const n: number = 6 * 7;\nconsole.log(`n=${n}`);\n"}, e.Compile},
		{"global from an earlier compile", map[string]string{"main.ts": "console.log(leak);\n"}, e.Compile},
		{"type error", map[string]string{"main.ts": "const s: string = 42;\nconsole.log(undefinedName);\n"}, e.Compile},
		{"syntax error", map[string]string{"main.ts": "function (\n"}, e.Compile},
		{"modules", map[string]string{"main.ts": "import { answer } from \"./helper\";\nconsole.log(answer());\n",
			"helper.ts": "export const answer = (): number => 42;\n"}, e.Compile},
		{"other options", map[string]string{"main.ts": "let x = 1; x = 'a';\n"}, append(append([]string{}, e.Compile[:4]...), "main.ts")},
		{"version", nil, append(append([]string{}, e.Compile[:4]...), "--version")},
	}
	// A compile that declares a global, before the one that uses it.
	if r, _ := compile(map[string]string{"main.ts": "declare global { var leak: number }\nexport {};\n"}, e.Compile, true); !r.Prewarmed || r.Code != 0 {
		t.Fatalf("declaring compile: prewarmed %v, code %d, stdout %q, stderr %q", r.Prewarmed, r.Code, r.stdout, r.stderr)
	}
	for _, tc := range cases {
		warm, warmJS := compile(tc.files, tc.argv, true)
		cold, coldJS := compile(tc.files, tc.argv, false)
		if !warm.Prewarmed {
			t.Fatalf("%s: the compile did not use the resident compiler (stderr %q)", tc.name, warm.stderr)
		}
		if warm.stdout != cold.stdout || warm.stderr != cold.stderr || warm.Code != cold.Code || warmJS != coldJS {
			t.Fatalf("%s: prewarmed gave code %d, stdout %q, stderr %q, js %q;\ntsc gave code %d, stdout %q, stderr %q, js %q",
				tc.name, warm.Code, warm.stdout, warm.stderr, warmJS, cold.Code, cold.stdout, cold.stderr, coldJS)
		}
	}
}
