package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/api"
	"github.com/firesandbox/firesandbox/internal/api/client"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

type runFlags struct {
	stdin      string
	stdinFile  string
	timeout    time.Duration
	outLimit   int64
	memMiB     int64
	procs      int64
	jsonOut    bool
	cold       bool
	standalone bool
	mounts     []string
}

func newRunCmd(g *globalFlags) *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run [flags] LANGUAGE (-c CODE | FILE | -) [ARG...]",
		Short: "Run a program once in a fresh microVM",
		Long: `Run a program once in a fresh microVM and print its output.

The program is CODE given with -c, a FILE, or - for code on standard input.
ARGs after it are passed to the program. stdout and stderr stay separate,
and the program's exit code becomes firesandbox's exit code.

Exit codes: the program's own; 128+N if it died of signal N; 124 if it
was killed at its time limit; 137 (as for SIGKILL) if it was stopped for
passing an output limit, however it ended; 125 if firesandbox itself
failed.

If a serve of this data directory is running, run goes through its unix
socket and takes a VM from its warm pool; otherwise (or with --standalone)
it starts the VM itself. Output, exit codes and --json are the same either
way. Flags that set up this process's VMs (--cold, --mount, --driver,
--accel, --memory, --vcpus, --image-format, --no-jailer, --config) make it
run in-process even with a serve running; -v says which way it went.`,
		Example: `  firesandbox run python -c 'print(6*7)'
  firesandbox run python script.py arg1 arg2
  echo 'print(1)' | firesandbox run python -
  firesandbox run --stdin 'hello' python -c 'print(input().upper())'
  firesandbox run --timeout 2s python -c 'while True: pass'`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRun(cmd, g, &f, args)
		},
	}
	// Flags stop at LANGUAGE, so the program's own flags pass through;
	// run flags may also sit between LANGUAGE and the program.
	cmd.Flags().SetInterspersed(false)
	fl := cmd.Flags()
	fl.StringVar(&f.stdin, "stdin", "", "data for the program's standard input")
	fl.StringVar(&f.stdinFile, "stdin-file", "", "file whose content is the program's standard input")
	fl.DurationVar(&f.timeout, "timeout", 0, "wall-clock limit for the program (default 15s)")
	fl.Int64Var(&f.outLimit, "output-limit", 0, "bytes each of stdout and stderr may carry (default 1 MiB)")
	fl.Int64Var(&f.memMiB, "memory-limit", 0, "memory limit for the program in MiB (default 256)")
	fl.Int64Var(&f.procs, "procs", 0, "limit on processes and threads alive at once (default 64)")
	fl.StringArrayVar(&f.mounts, "mount", nil, "show a host directory read-only in the guest, as it is at start: /host/dir:/guest/dir (repeatable; boots cold)")
	fl.BoolVar(&f.cold, "cold", false, "boot a fresh VM instead of restoring the language's snapshot")
	fl.BoolVar(&f.jsonOut, "json", false, "print the result (stage, status, exit code, timings) as JSON on stderr at the end: /v1/run/stream's result")
	fl.BoolVar(&f.standalone, "standalone", false, "run in this process even if a serve of this data directory is running")
	return cmd
}

// splitRunArgs separates LANGUAGE, run flags placed after it, the program
// (-c CODE, FILE or -) and the program's arguments.
func splitRunArgs(cmd *cobra.Command, args []string) (lang, code, file string, progArgs []string, err error) {
	if len(args) == 0 {
		return "", "", "", nil, usagef("missing LANGUAGE; see `firesandbox languages` and `firesandbox run --help`")
	}
	lang, rest := args[0], args[1:]
	var flagArgs []string
	for len(rest) > 0 && strings.HasPrefix(rest[0], "--") && rest[0] != "--" {
		name, _, hasVal := strings.Cut(strings.TrimPrefix(rest[0], "--"), "=")
		fl := cmd.Flags().Lookup(name)
		if fl == nil {
			break // not ours: a file name starting with -- is unlikely; the program spec check reports it
		}
		flagArgs = append(flagArgs, rest[0])
		rest = rest[1:]
		if !hasVal && fl.Value.Type() != "bool" && len(rest) > 0 {
			flagArgs = append(flagArgs, rest[0])
			rest = rest[1:]
		}
	}
	if len(flagArgs) > 0 {
		if err := cmd.Flags().Parse(flagArgs); err != nil {
			return "", "", "", nil, usageError{err}
		}
	}
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	switch {
	case len(rest) == 0:
		return "", "", "", nil, usagef("missing program: give -c CODE, a FILE, or - for standard input")
	case rest[0] == "-c":
		if len(rest) < 2 {
			return "", "", "", nil, usagef("-c needs the code as its argument")
		}
		return lang, rest[1], "", rest[2:], nil
	case rest[0] != "-" && strings.HasPrefix(rest[0], "-"):
		return "", "", "", nil, usagef("unknown flag %q after %s (run flags go before the program; see --help)", rest[0], lang)
	}
	return lang, "", rest[0], rest[1:], nil
}

func runRun(cmd *cobra.Command, g *globalFlags, f *runFlags, args []string) error {
	lang, code, file, progArgs, err := splitRunArgs(cmd, args)
	if err != nil {
		return err
	}
	var src []byte
	switch {
	case file == "-":
		if src, err = io.ReadAll(io.LimitReader(os.Stdin, sandbox.MaxRunBytes+1)); err != nil {
			return fmt.Errorf("read program from stdin: %w", err)
		}
	case file != "":
		if src, err = os.ReadFile(file); err != nil {
			return usageError{fmt.Errorf("read program: %w", err)}
		}
	default:
		src = []byte(code)
	}
	if f.stdin != "" && f.stdinFile != "" {
		return usagef("give --stdin or --stdin-file, not both")
	}
	stdin := []byte(f.stdin)
	if f.stdinFile != "" {
		if stdin, err = os.ReadFile(f.stdinFile); err != nil {
			return usageError{fmt.Errorf("read --stdin-file: %w", err)}
		}
	}
	if f.timeout < 0 || f.outLimit < 0 || f.memMiB < 0 || f.procs < 0 {
		return usagef("limits must not be negative")
	}

	var mounts []sandbox.Mount
	for _, s := range f.mounts {
		mt, err := sandbox.ParseMount(s)
		if err != nil {
			return usageError{err}
		}
		mounts = append(mounts, mt)
	}
	limits := agentproto.Limits{
		WallMillis:  f.timeout.Milliseconds(),
		OutputBytes: f.outLimit,
		MemoryBytes: f.memMiB << 20,
		Procs:       f.procs,
	}
	sock, note := g.runThrough(cmd, f)
	if note != "" && g.verbose {
		fmt.Fprintf(os.Stderr, "firesandbox: %s\n", note)
	}
	stdout, flushOut := guestWriter(os.Stdout)
	stderr, flushErr := guestWriter(os.Stderr)
	start := time.Now()
	var res *client.RunResult
	if sock != "" {
		res, err = client.New("unix://"+sock, "").Run(cmd.Context(), client.RunIn{
			Language: lang,
			Files:    []client.FileIn{{Content: base64.StdEncoding.EncodeToString(src), Encoding: "base64"}},
			Stdin:    string(stdin),
			Args:     progArgs,
			Limits: client.Limits{TimeoutMillis: limits.WallMillis, MemoryBytes: limits.MemoryBytes,
				OutputBytes: limits.OutputBytes, Procs: limits.Procs},
		}, stdout, stderr, stderr)
	} else {
		res, err = runInProcess(cmd.Context(), g, sandbox.RunRequest{
			Mounts:    mounts,
			Language:  lang,
			Files:     []agentproto.File{{Content: src}},
			Stdin:     stdin,
			Args:      progArgs,
			Cold:      f.cold,
			RunLimits: limits,
		}, sandbox.Streams{Stdout: stdout, Stderr: stderr, CompileStdout: stderr, CompileStderr: stderr})
	}
	elapsed := time.Since(start)
	flushOut()
	flushErr()
	if err != nil && cmd.Context().Err() != nil {
		// Said the same whichever way it ran and wherever it was stopped.
		return errors.New("interrupted: the run was stopped and its VM removed")
	}
	if err != nil {
		return err
	}
	if f.jsonOut {
		b, _ := json.MarshalIndent(res, "", "  ")
		fmt.Fprintln(os.Stderr, string(b))
	}
	if g.verbose {
		fmt.Fprintln(os.Stderr, describeRun(res, sock, elapsed))
	}
	r := &agentproto.ExitResult{Code: res.ExitCode, Signal: res.Signal, Status: agentproto.Status(res.Status), Message: res.Message}
	if res.Stage == "compile" {
		fmt.Fprintf(os.Stderr, "firesandbox: compilation failed%s\n", describe(r))
	} else if r.Status != agentproto.StatusOK && r.Status != agentproto.StatusRuntimeError {
		fmt.Fprintf(os.Stderr, "firesandbox: %s\n", strings.TrimPrefix(describe(r), ": "))
	}
	return exitError{code: exitCode(r)}
}

// runInProcess runs req with a Manager of this process and returns its
// result as serve would send it, so that what is printed of it does not
// depend on where it ran.
func runInProcess(ctx context.Context, g *globalFlags, req sandbox.RunRequest, out sandbox.Streams) (*client.RunResult, error) {
	mgr, err := g.manager()
	if err != nil {
		return nil, err
	}
	res, err := mgr.Run(ctx, req, out)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(api.ResultOf(res))
	if err != nil {
		return nil, err
	}
	var r client.RunResult
	return &r, json.Unmarshal(b, &r)
}

// inProcessFlags are the flags that set up a Manager or a VM of this
// process: a serve has its own, and its API takes a language, a program
// and limits. Given explicitly, they make run skip the serve.
var inProcessFlags = []string{"cold", "mount", "driver", "accel", "memory", "vcpus", "image-format", "no-jailer", "config"}

// runThrough returns the socket of the serve a run goes through, or ""
// to run in-process; note says why a live serve is skipped.
func (g *globalFlags) runThrough(cmd *cobra.Command, f *runFlags) (sock, note string) {
	if f.standalone {
		return "", ""
	}
	sock = g.liveSocket()
	if sock == "" {
		return "", ""
	}
	var given []string
	for _, name := range inProcessFlags {
		if fl := cmd.Flags().Lookup(name); fl != nil && fl.Changed {
			given = append(given, "--"+name)
		}
	}
	if len(given) > 0 {
		return "", fmt.Sprintf("%s: running in this process, not through serve %s", strings.Join(given, ", "), sock)
	}
	return sock, ""
}

// describeRun is run -v's line about how the run went: where it ran, how
// its VM was had, and every part of the VM's start the result has. A
// pooled VM's start happened before the run asked for it, so it is told
// apart from the run's own time.
func describeRun(res *client.RunResult, sock string, elapsed time.Duration) string {
	where := "in-process"
	if sock != "" {
		where = "via serve " + sock
	}
	ms := func(n int64) time.Duration { return time.Duration(n) * time.Millisecond }
	how := "cold boot"
	switch {
	case res.Pooled:
		how = "from the warm pool"
	case res.Restored:
		how = "restored from snapshot"
	}
	if res.Prewarmed {
		how += ", prewarmed runtime"
	}
	parts := make([]string, len(res.Timings))
	for i, t := range res.Timings {
		parts[i] = fmt.Sprintf("%s %.1fms", t.Name, t.Millis)
	}
	line := fmt.Sprintf("firesandbox: %s %s %s: ", res.Language, res.Version, where)
	if res.Pooled {
		line += fmt.Sprintf("VM %s, total %s, command %s; the pool had made it in %s", how, ms(res.TotalMillis), elapsed.Round(time.Millisecond), ms(res.ReadyMillis))
		if len(parts) > 0 {
			line += ": " + strings.Join(parts, ", ")
		}
		return line
	}
	line += fmt.Sprintf("VM ready in %s (%s), total %s, command %s", ms(res.ReadyMillis), how, ms(res.TotalMillis), elapsed.Round(time.Millisecond))
	if len(parts) > 0 {
		line += "; VM start: " + strings.Join(parts, ", ")
	}
	return line
}

func describe(r *agentproto.ExitResult) string {
	if r.Message != "" {
		return fmt.Sprintf(": %s (%s)", r.Message, r.Status)
	}
	if r.Signal != "" {
		return fmt.Sprintf(": killed by %s (%s)", r.Signal, r.Status)
	}
	return fmt.Sprintf(": exit code %d", r.Code)
}

// exitCode maps a result to the CLI's exit code, shell-style.
func exitCode(r *agentproto.ExitResult) int {
	switch {
	case r.Status == agentproto.StatusTimeout:
		return 124
	case r.Status == agentproto.StatusInternal:
		return exitInternal // the sandbox failed, not the program
	case r.Status == agentproto.StatusStdoutLimit || r.Status == agentproto.StatusStderrLimit:
		// The agent kills the program at the cap, but the program may have
		// ended first (a write failing, a quick exit): one code for both.
		return 128 + 9
	case r.Signal != "":
		if s := unix.SignalNum(r.Signal); s != 0 {
			return 128 + int(s)
		}
		return 128 + 9
	case r.Code == 0 && r.Status != agentproto.StatusOK:
		return 1 // a failure the agent reported for a clean exit code
	}
	return r.Code
}
