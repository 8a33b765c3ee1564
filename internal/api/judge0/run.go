package judge0

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/google/shlex"
	"golang.org/x/sys/unix"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// Judge0's statuses.
const (
	StatusInQueue         = 1
	StatusProcessing      = 2
	StatusAccepted        = 3
	StatusWrongAnswer     = 4
	StatusTimeLimit       = 5
	StatusCompilationErr  = 6
	StatusSIGSEGV         = 7
	StatusSIGXFSZ         = 8
	StatusSIGFPE          = 9
	StatusSIGABRT         = 10
	StatusNZEC            = 11
	StatusRuntimeOther    = 12
	StatusInternalError   = 13
	StatusExecFormatError = 14
)

var statusNames = [...]string{"", "In Queue", "Processing", "Accepted", "Wrong Answer", "Time Limit Exceeded",
	"Compilation Error", "Runtime Error (SIGSEGV)", "Runtime Error (SIGXFSZ)", "Runtime Error (SIGFPE)",
	"Runtime Error (SIGABRT)", "Runtime Error (NZEC)", "Runtime Error (Other)", "Internal Error", "Exec Format Error"}

func statusName(id int) string {
	if id <= 0 || id >= len(statusNames) {
		return ""
	}
	return statusNames[id]
}

// unsafeShellChars are what Judge0 removes from compiler options and
// program arguments before its shell sees them.
var unsafeShellChars = regexp.MustCompile("[$&;<>|`]")

// words splits options as Judge0's bash script would, once the unsafe
// characters are gone.
func words(s *string) ([]string, error) {
	if s == nil {
		return nil, nil
	}
	return shlex.Split(strings.TrimSpace(unsafeShellChars.ReplaceAllString(*s, "")))
}

// compilerOptionsAt is where compiler options go in a compile command:
// after the compiler's name, or -1 for a shell script (they go into the
// script, after its first word).
func compilerOptionsAt(argv []string) int {
	if len(argv) == 0 {
		return -1
	}
	if isShellScript(argv) {
		return -1
	}
	return 1
}

func isShellScript(argv []string) bool {
	b := path.Base(argv[0])
	return len(argv) >= 3 && (b == "sh" || b == "bash") && strings.HasPrefix(argv[1], "-") &&
		!strings.HasPrefix(argv[1], "--") && strings.HasSuffix(argv[1], "c")
}

// withOptions inserts compiler options into a compile command.
func withOptions(argv, opts []string) []string {
	if len(opts) == 0 || len(argv) == 0 {
		return argv
	}
	if isShellScript(argv) && strings.Contains(strings.TrimSpace(argv[2]), "\n") {
		// A script of several commands takes the options as its
		// positional parameters: it puts "$@" where they belong.
		out := append([]string{}, argv[:3]...)
		out = append(out, path.Base(argv[0]))
		return append(out, opts...)
	}
	if isShellScript(argv) {
		quoted := make([]string, len(opts))
		for i, o := range opts {
			quoted[i] = "'" + strings.ReplaceAll(o, "'", `'\''`) + "'"
		}
		script := strings.TrimLeft(argv[2], " ")
		first, rest, _ := strings.Cut(script, " ")
		out := append([]string{}, argv...)
		out[2] = first + " " + strings.Join(quoted, " ") + " " + rest
		return out
	}
	out := append([]string{argv[0]}, opts...)
	return append(out, argv[1:]...)
}

// errClosed means the Handler closed during the run: the submission is
// left running, so the next start runs it again.
var errClosed = errors.New("judge0 closed")

// runRequest turns a submission into the run that executes it.
func (h *Handler) runRequest(in *input, tenant string) (sandbox.RunRequest, error) {
	var req sandbox.RunRequest
	lang := h.langs.get(in.LanguageID)
	if lang == nil {
		return req, fmt.Errorf("language with id %d is not available on this server", in.LanguageID)
	}
	files, msg := h.additionalFiles(in.AdditionalFiles, lang)
	if msg != "" {
		return req, fmt.Errorf("additional_files %s", msg)
	}
	var e *image.Entry
	if lang.project() {
		if e = h.projectLanguage(files); e == nil {
			return req, fmt.Errorf("no language here can run a multi-file program (%s is not installed)", h.cfg.MultiFileLanguage)
		}
		has := map[string]bool{}
		for _, f := range files {
			has[f.Path] = true
		}
		req.CompileCmd = []string{} // none, unless the archive has a compile script
		for _, s := range []string{"compile.sh", "compile"} {
			if has[s] {
				req.CompileCmd = []string{"bash", s}
				break
			}
		}
		run := "run"
		if has["run.sh"] {
			run = "run.sh"
		}
		req.RunCmd = []string{"bash", run}
		req.Files = files
	} else {
		e = lang.Entry
		req.Files = append([]agentproto.File{{Content: in.SourceCode}}, files...)
		var err error
		if req.Args, err = words(in.CommandLineArguments); err != nil {
			return req, fmt.Errorf("command_line_arguments: %w", err)
		}
		opts, err := words(in.CompilerOptions)
		if err != nil {
			return req, fmt.Errorf("compiler_options: %w", err)
		}
		if len(opts) > 0 {
			req.RunCmd, req.CompileCmd = e.Run, withOptions(e.Compile, opts)
		}
	}
	req.Language, req.Version = e.Name, e.Version
	req.Stdin = in.Stdin
	req.RunLimits = agentproto.Limits{
		WallMillis:  int64(in.WallTimeLimit * 1000),
		OutputBytes: max(int64(in.MaxFileSize)<<10, 1), // 0 KB: nothing may be written
		Procs:       int64(in.MaxProcesses),
		MemoryBytes: int64(in.MemoryLimit) << 10,
	}
	if in.EnableNetwork {
		if h.deps.Network == nil {
			return req, errors.New("enabling network is not allowed")
		}
		if err := h.deps.Network(tenant, &req); err != nil {
			return req, fmt.Errorf("enabling network is not allowed: %w", err)
		}
	}
	return req, nil
}

// capture collects a run's output; compile output has both streams, as
// Judge0 compiles with stderr sent to stdout.
type capture struct {
	mu                      sync.Mutex
	stdout, stderr, compile bytes.Buffer
	redirect                bool
}

type captureWriter struct {
	c   *capture
	dst *bytes.Buffer
}

func (w captureWriter) Write(b []byte) (int, error) {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	return w.dst.Write(b)
}

func (c *capture) streams() sandbox.Streams {
	stderr := &c.stderr
	if c.redirect {
		stderr = &c.stdout
	}
	return sandbox.Streams{Stdout: captureWriter{c, &c.stdout}, Stderr: captureWriter{c, stderr},
		CompileStdout: captureWriter{c, &c.compile}, CompileStderr: captureWriter{c, &c.compile}}
}

// orNil is b, or nil when empty: Judge0 stores empty output as null.
func orNil(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return bytes.Clone(b)
}

// execute runs a claimed submission number_of_runs times (stopping at the
// first that is not Accepted) and returns its status and result, with
// time and memory averaged over the runs as Judge0 does. It returns
// errClosed if the Handler closed meanwhile.
func (h *Handler) execute(ctx context.Context, in *input, tenant string) (int, result, error) {
	req, err := h.runRequest(in, tenant)
	if err != nil {
		return StatusInternalError, result{Message: []byte(err.Error())}, nil
	}
	var status int
	var res result
	var sumTime, sumMem float64
	runs := 0
	for range max(in.NumberOfRuns, 1) {
		c := &capture{redirect: in.RedirectStderr}
		rctx, cancel := context.WithTimeout(ctx, runBudget(req))
		rr, err := h.deps.Runner.Run(rctx, req, c.streams())
		cancel()
		if ctx.Err() != nil {
			return 0, result{}, errClosed
		}
		if err != nil {
			return StatusInternalError, result{Message: []byte(err.Error())}, nil
		}
		c.mu.Lock()
		status, res = outcome(rr, c, in)
		c.mu.Unlock()
		if res.Time == nil { // compilation failed, or the run never ran
			return status, res, nil
		}
		runs++
		sumTime += *res.Time
		sumMem += float64(*res.Memory)
		if status != StatusAccepted {
			break
		}
	}
	avgTime, avgMem := sumTime/float64(runs), int(sumMem/float64(runs))
	res.Time, res.Memory = &avgTime, &avgMem
	return status, res, nil
}

// runBudget bounds one run end to end: a VM, the compile step and the
// run step, each already bounded below; this only guards against a
// stuck call.
func runBudget(req sandbox.RunRequest) time.Duration {
	return time.Duration(req.RunLimits.WallMillis)*time.Millisecond + 15*time.Minute
}

// signalNumber is a signal's number from its name ("SIGSEGV"), 0 if none.
func signalNumber(name string) int {
	if name == "" {
		return 0
	}
	return int(unix.SignalNum(name))
}

// outcome maps a run's result to Judge0's status and attributes, as
// Judge0 reads isolate's: TO is Time Limit Exceeded, a signal picks a
// Runtime Error by its number, a non-zero exit is NZEC, a failure of the
// sandbox is Internal Error, and an output past max_file_size is SIGXFSZ
// (isolate enforces it as a file size limit on the output files). A run
// that ended well is Accepted unless it used more CPU time than
// cpu_time_limit, or its stdout differs from expected_output.
func outcome(rr *sandbox.RunResult, c *capture, in *input) (int, result) {
	var res result
	compileOut := orNil(c.compile.Bytes())
	if cr := rr.Compile; cr != nil && cr.Status != agentproto.StatusOK {
		if cr.Status == agentproto.StatusInternal {
			return StatusInternalError, result{Message: []byte(cr.Message), CompileOutput: compileOut}
		}
		if cr.Status == agentproto.StatusTimeout {
			compileOut = []byte("Compilation time limit exceeded.")
		}
		return StatusCompilationErr, result{CompileOutput: compileOut}
	}
	r := rr.Run
	if r == nil {
		return StatusInternalError, result{Message: []byte("the program did not run"), CompileOutput: compileOut}
	}
	t, wall, mem := float64(r.CPUMillis)/1000, float64(r.WallMillis)/1000, int(r.MemoryBytes>>10)
	res = result{Stdout: orNil(c.stdout.Bytes()), Stderr: orNil(c.stderr.Bytes()), CompileOutput: compileOut,
		Time: &t, WallTime: &wall, Memory: &mem}
	code := 0
	res.ExitCode = &code
	setSignal := func(n int) {
		if n > 0 {
			res.ExitSignal = &n
		}
	}
	msg := func(s string) { res.Message = []byte(s) }
	switch r.Status {
	case agentproto.StatusTimeout:
		setSignal(signalNumber(r.Signal))
		msg("Time limit exceeded")
		return StatusTimeLimit, res
	case agentproto.StatusSignal:
		n := signalNumber(r.Signal)
		setSignal(n)
		if r.Message != "" {
			msg(r.Message) // e.g. the memory limit
		} else {
			msg(fmt.Sprintf("Caught fatal signal %d", n))
		}
		switch unix.Signal(n) {
		case unix.SIGSEGV:
			return StatusSIGSEGV, res
		case unix.SIGXFSZ:
			return StatusSIGXFSZ, res
		case unix.SIGFPE:
			return StatusSIGFPE, res
		case unix.SIGABRT:
			return StatusSIGABRT, res
		}
		return StatusRuntimeOther, res
	case agentproto.StatusStdoutLimit, agentproto.StatusStderrLimit:
		setSignal(int(unix.SIGXFSZ))
		msg(fmt.Sprintf("File size limit exceeded: %s", r.Message))
		return StatusSIGXFSZ, res
	case agentproto.StatusRuntimeError:
		code = r.Code
		msg(fmt.Sprintf("Exited with error status %d", r.Code))
		return StatusNZEC, res
	case agentproto.StatusInternal:
		res.ExitCode = nil
		msg(r.Message)
		return StatusInternalError, res
	}
	if in.CPUTimeLimit > 0 && float64(r.CPUMillis) > in.CPUTimeLimit*1000 {
		msg("Time limit exceeded")
		return StatusTimeLimit, res
	}
	if in.ExpectedOutput == nil {
		return StatusAccepted, res
	}
	if want, got := judgeStrip(in.ExpectedOutput), judgeStrip(res.Stdout); want != nil && got != nil && bytes.Equal(want, got) {
		return StatusAccepted, res
	}
	return StatusWrongAnswer, res
}

// judgeStrip is Judge0's comparison form of an output: trailing white
// space (and NUL) removed from every line and from the end. No output is
// nil and differs from every expected output, even an empty one, as in
// Judge0.
func judgeStrip(b []byte) []byte {
	if b == nil {
		return nil
	}
	const ws = " \t\n\v\f\r\x00"
	lines := bytes.Split(b, []byte("\n"))
	for i, l := range lines {
		lines[i] = bytes.TrimRight(l, ws)
	}
	out := bytes.TrimRight(bytes.Join(lines, []byte("\n")), ws)
	if out == nil {
		out = []byte{}
	}
	return out
}
