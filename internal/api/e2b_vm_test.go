package api

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/testutil"
)

// e2bScript drives a real serve through E2B's own npm SDKs, as an E2B
// user would after pointing E2B_API_URL and E2B_SANDBOX_URL at it.
const e2bScript = `import { Sandbox } from "e2b";
import { Sandbox as CodeInterpreter } from "@e2b/code-interpreter";
const slow = { requestTimeoutMs: 600000 }; // first use of a template makes its snapshot, under TCG
const out = {};
const step = async (name, fn) => {
  try { out[name] = await fn(); } catch (e) { out[name] = { thrown: e.constructor.name, message: String(e.message).slice(0, 300), exitCode: e.exitCode }; }
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const sbx = await Sandbox.create(slow);
out.id = sbx.sandboxId;
await step("run", async () => { const r = await sbx.commands.run("echo hi; echo err >&2; echo $0 $HOME $(whoami)", slow); return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr }; });
await step("exit3", async () => { await sbx.commands.run("exit 3", slow); return "no error"; });
await step("background", async () => {
  const bg = await sbx.commands.run("sleep 600", { background: true, ...slow });
  const listed = (await sbx.commands.list()).some((p) => p.pid === bg.pid);
  const killed = await bg.kill();
  let end = "no error";
  try { await bg.wait(); } catch (e) { end = e.constructor.name; }
  return { listed, killed, end };
});
await step("stdin", async () => {
  const cat = await sbx.commands.run("cat", { background: true, stdin: true, ...slow });
  await cat.sendStdin("hello stdin\n");
  await cat.closeStdin();
  return (await cat.wait()).stdout;
});
await step("root", async () => (await sbx.commands.run("id -u", { user: "root", ...slow })).stdout.trim());
await step("files", async () => {
  await sbx.files.write("hello.txt", "hello file");
  const read = await sbx.files.read("hello.txt");
  const made = await sbx.files.makeDir("d1/d2");
  const madeAgain = await sbx.files.makeDir("d1/d2");
  const names = (await sbx.files.list(".")).map((e) => e.name).sort();
  const events = [];
  const w = await sbx.files.watchDir("d1", (e) => events.push(e.type + ":" + e.name));
  await sbx.files.write("d1/w.txt", "x");
  for (let i = 0; i < 100 && !events.some((e) => e === "create:w.txt"); i++) await sleep(100);
  await sbx.files.remove("d1/w.txt");
  for (let i = 0; i < 100 && !events.some((e) => e === "remove:w.txt"); i++) await sleep(100);
  await w.stop();
  await sbx.files.remove("d1");
  const gone = !(await sbx.files.exists("d1"));
  let missing = "no error";
  try { await sbx.files.read("nope.txt"); } catch (e) { missing = e.constructor.name; }
  return { read, made, madeAgain, names, events, gone, missing };
});
await step("info", async () => {
  await sbx.setTimeout(120000);
  const info = await sbx.getInfo();
  const listed = (await Sandbox.list().nextItems()).some((s) => s.sandboxId === sbx.sandboxId);
  return { state: info.state, template: info.templateId, endsIn: info.endAt.getTime() - Date.now(), listed, running: await sbx.isRunning() };
});
await step("otherTenant", async () => {
  const other = { apiKey: process.env.OTHER_KEY };
  const r = {};
  try { await Sandbox.getInfo(sbx.sandboxId, other); r.getInfo = "found"; } catch (e) { r.getInfo = e.constructor.name; }
  try { await Sandbox.connect(sbx.sandboxId, other); r.connect = "found"; } catch (e) { r.connect = e.constructor.name; }
  r.kill = await Sandbox.kill(sbx.sandboxId, other);
  return r;
});
await step("pause", async () => {
  const paused = await sbx.pause(slow);
  const state = (await sbx.getInfo()).state;
  const running = await sbx.isRunning();
  const again = await Sandbox.connect(sbx.sandboxId, slow);
  return { paused, state, running, file: await again.files.read("hello.txt"), after: (await again.getInfo()).state };
});
await step("kill", async () => ({ first: await sbx.kill(), second: await sbx.kill() }));
await step("python", async () => {
  const py = await Sandbox.create("python", slow);
  const r = await py.commands.run("python3 -c 'print(6*7)'", slow);
  await py.kill();
  return r.stdout;
});
await step("interpreter", async () => {
  const ci = await CodeInterpreter.create(slow);
  await ci.runCode("x = 41", slow);
  const v = await ci.runCode("x + 1", slow);
  const fig = await ci.runCode("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()", slow);
  const err = await ci.runCode("def f():\n    return 1 / 0\nf()", slow);
  const logs = await ci.runCode("print('out')", slow);
  const ctx = await ci.createCodeContext({ language: "python" });
  const own = await ci.runCode("x", { context: ctx, ...slow });
  await ci.kill();
  out.figure = { results: fig.results.map((r) => r.formats()), error: fig.error, stderr: fig.logs.stderr };
  return { value: v.text, png: fig.results.some((r) => r.png && r.png.length > 100), error: err.error && err.error.name,
    traceback: !!(err.error && err.error.traceback.includes("return 1 / 0")), stdout: logs.logs.stdout, own: own.error && own.error.name };
});
console.log(JSON.stringify(out));
`

// TestE2BSDKs runs E2B's current npm SDKs (e2b and @e2b/code-interpreter)
// against a real serve with real VMs. Two tenants each have a key made
// as `firesandbox key create` makes them.
func TestE2BSDKs(t *testing.T) {
	fx := testutil.RequireVMs(t)
	testutil.RequireQEMU(t)
	node := testutil.RequireBinary(t, "node")
	npm := testutil.RequireBinary(t, "npm")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	install := exec.CommandContext(ctx, npm, "install", "--prefix", dir, "--no-audit", "--no-fund", "--loglevel=error", "e2b@2", "@e2b/code-interpreter@2")
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm install e2b: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "e2b.mjs"), []byte(e2bScript), 0o644); err != nil {
		t.Fatal(err)
	}

	s := startVMServer(t, fx, t.TempDir(), shortTempDir(t))
	defer s.stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Two tenants, each with a key made as `firesandbox key create` makes
	// them: the SDK sends it as X-API-KEY.
	key1, _, err := s.srv.keys.CreateKey(ctx, "tenant-one", "")
	if err != nil {
		t.Fatal(err)
	}
	key2, _, err := s.srv.keys.CreateKey(ctx, "tenant-two", "")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: s.srv.Handler(), Protocols: new(http.Protocols)}
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	go hs.Serve(ln)
	defer hs.Close()
	url := "http://" + ln.Addr().String()

	cmd := exec.CommandContext(ctx, node, filepath.Join(dir, "e2b.mjs"))
	cmd.Env = append(os.Environ(), "E2B_API_URL="+url, "E2B_SANDBOX_URL="+url,
		"E2B_API_KEY="+key1, "OTHER_KEY="+key2)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	t.Logf("SDK results: %s", out)
	var got struct {
		Run struct {
			ExitCode       int
			Stdout, Stderr string
		}
		Exit3 struct {
			Thrown   string
			ExitCode int
		}
		Background struct {
			Listed, Killed bool
			End            string
		}
		Stdin string
		Root  string
		Files struct {
			Read            string
			Made, MadeAgain bool
			Names, Events   []string
			Gone            bool
			Missing         string
		}
		Info struct {
			State, Template string
			EndsIn          int64
			Listed, Running bool
		}
		OtherTenant struct {
			GetInfo, Connect string
			Kill             bool
		}
		Pause struct {
			Paused, Running    bool
			State, File, After string
		}
		Kill        struct{ First, Second bool }
		Python      string
		Interpreter struct {
			Value, Error, Own string
			PNG, Traceback    bool
			Stdout            []string
		}
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	check := func(what string, ok bool) {
		t.Helper()
		if !ok {
			t.Errorf("%s: not as E2B does it (see the SDK results above)", what)
		}
	}
	check("commands.run", got.Run.ExitCode == 0 && got.Run.Stdout == "hi\n/bin/bash /home/user user\n" && got.Run.Stderr == "err\n")
	check("CommandExitError", got.Exit3.Thrown == "CommandExitError" && got.Exit3.ExitCode == 3)
	check("background then kill", got.Background.Listed && got.Background.Killed && got.Background.End == "CommandExitError")
	check("stdin", got.Stdin == "hello stdin\n")
	check("user root", got.Root == "0")
	check("files", got.Files.Read == "hello file" && got.Files.Made && !got.Files.MadeAgain && got.Files.Gone &&
		got.Files.Missing == "FileNotFoundError" && contains(got.Files.Names, "hello.txt") && contains(got.Files.Names, "d1"))
	check("watchDir", contains(got.Files.Events, "create:w.txt") && contains(got.Files.Events, "remove:w.txt"))
	check("getInfo/setTimeout/list", got.Info.State == "running" && got.Info.Template == "code-interpreter" &&
		got.Info.EndsIn > 100_000 && got.Info.EndsIn <= 121_000 && got.Info.Listed && got.Info.Running)
	check("another tenant", got.OtherTenant.GetInfo == "SandboxNotFoundError" && got.OtherTenant.Connect == "SandboxNotFoundError" && !got.OtherTenant.Kill)
	check("pause then connect", got.Pause.Paused && got.Pause.State == "paused" && !got.Pause.Running && got.Pause.File == "hello file" && got.Pause.After == "running")
	check("kill", got.Kill.First && !got.Kill.Second)
	check("language template", got.Python == "42\n")
	check("runCode", got.Interpreter.Value == "42" && got.Interpreter.PNG && got.Interpreter.Error == "ZeroDivisionError" &&
		got.Interpreter.Traceback && len(got.Interpreter.Stdout) == 1 && got.Interpreter.Stdout[0] == "out\n" && got.Interpreter.Own == "NameError")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
