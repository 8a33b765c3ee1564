package judge0

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// input is what a client asked for: Judge0's attributes 1-20, with the
// defaults filled in. It is persisted as the submission's request.
type input struct {
	SourceCode           []byte  `json:"source_code"`
	LanguageID           int     `json:"language_id"`
	CompilerOptions      *string `json:"compiler_options"`
	CommandLineArguments *string `json:"command_line_arguments"`
	Stdin                []byte  `json:"stdin"`
	ExpectedOutput       []byte  `json:"expected_output"`
	CPUTimeLimit         float64 `json:"cpu_time_limit"`
	CPUExtraTime         float64 `json:"cpu_extra_time"`
	WallTimeLimit        float64 `json:"wall_time_limit"`
	MemoryLimit          int     `json:"memory_limit"`
	StackLimit           int     `json:"stack_limit"`
	MaxProcesses         int     `json:"max_processes_and_or_threads"`
	PerProcessTime       bool    `json:"enable_per_process_and_thread_time_limit"`
	PerProcessMemory     bool    `json:"enable_per_process_and_thread_memory_limit"`
	MaxFileSize          int     `json:"max_file_size"`
	RedirectStderr       bool    `json:"redirect_stderr_to_stdout"`
	EnableNetwork        bool    `json:"enable_network"`
	NumberOfRuns         int     `json:"number_of_runs"`
	AdditionalFiles      []byte  `json:"additional_files"`
	CallbackURL          *string `json:"callback_url"`
}

// result is how a submission ended: Judge0's attributes 21-33.
type result struct {
	Stdout        []byte   `json:"stdout"`
	Stderr        []byte   `json:"stderr"`
	CompileOutput []byte   `json:"compile_output"`
	Message       []byte   `json:"message"`
	ExitCode      *int     `json:"exit_code"`
	ExitSignal    *int     `json:"exit_signal"`
	Time          *float64 `json:"time"`
	WallTime      *float64 `json:"wall_time"`
	Memory        *int     `json:"memory"`
}

// maxOptionChars bounds compiler_options and command_line_arguments.
const maxOptionChars = 512

// parseSubmission validates one submission's parameters as Judge0's
// model does, in its order and words, and fills in the defaults.
func (h *Handler) parseSubmission(p params, b64 bool, tenant string) (input, *errorsByField) {
	var in input
	errs := &errorsByField{}
	cfg := h.cfg

	langPresent := false
	if s, ok := p.scalar("language_id"); ok && strings.TrimSpace(s) != "" {
		langPresent = true
		in.LanguageID = rubyToI(s)
	}
	lang := h.langs.get(in.LanguageID)
	if !langPresent {
		lang = nil
	}
	project := lang != nil && lang.project()

	src, srcErr := p.text("source_code", b64)
	in.SourceCode = src
	switch {
	case srcErr != nil:
		errs.add("source_code", srcErr.Error())
	case !project && blank(src):
		errs.add("source_code", "can't be blank")
	case project && !blank(src):
		errs.add("source_code", "must be blank")
	}
	var err error
	if in.Stdin, err = p.text("stdin", b64); err != nil {
		errs.add("stdin", err.Error())
	}
	if in.ExpectedOutput, err = p.text("expected_output", b64); err != nil {
		errs.add("expected_output", err.Error())
	}
	if s, ok := p.scalar("additional_files"); ok && s != "" {
		if in.AdditionalFiles, err = decodeBase64(s); err != nil {
			errs.add("additional_files", err.Error())
		}
	}
	if project && len(in.AdditionalFiles) == 0 && !hasMsg(errs, "additional_files") {
		errs.add("additional_files", "can't be blank")
	}
	if !langPresent {
		errs.add("language_id", "can't be blank")
	}

	type bound struct {
		op    string // ">", ">="
		lo    float64
		hi    float64
		hiStr string // as Ruby prints the bound
	}
	numeric := func(name string, def float64, b bound) float64 {
		v, isNil, ok := p.number(name)
		switch {
		case isNil:
			return def
		case !ok:
			errs.add(name, "is not a number")
			return def
		}
		if b.op == ">" && v <= b.lo {
			errs.add(name, "must be greater than "+rubyNum(b.lo, false))
		}
		if b.op == ">=" && v < b.lo {
			errs.add(name, "must be greater than or equal to "+rubyNum(b.lo, false))
		}
		if v > b.hi {
			errs.add(name, "must be less than or equal to "+b.hiStr)
		}
		return v
	}
	fl := func(v float64) string { return rubyNum(v, true) }
	in.NumberOfRuns = int(numeric("number_of_runs", float64(cfg.NumberOfRuns), bound{">", 0, float64(cfg.MaxNumberOfRuns), strconv.Itoa(cfg.MaxNumberOfRuns)}))
	in.CPUTimeLimit = numeric("cpu_time_limit", cfg.CPUTimeLimit, bound{">=", 0, cfg.MaxCPUTimeLimit, fl(cfg.MaxCPUTimeLimit)})
	in.CPUExtraTime = numeric("cpu_extra_time", cfg.CPUExtraTime, bound{">=", 0, cfg.MaxCPUExtraTime, fl(cfg.MaxCPUExtraTime)})
	in.WallTimeLimit = numeric("wall_time_limit", cfg.WallTimeLimit, bound{">=", 1, cfg.MaxWallTimeLimit, fl(cfg.MaxWallTimeLimit)})
	_, memNil, _ := p.number("memory_limit")
	in.MemoryLimit = int(numeric("memory_limit", float64(cfg.MemoryLimit), bound{">=", 2048, float64(cfg.MaxMemoryLimit), strconv.Itoa(cfg.MaxMemoryLimit)}))
	in.StackLimit = int(numeric("stack_limit", float64(cfg.StackLimit), bound{">=", 0, float64(cfg.MaxStackLimit), strconv.Itoa(cfg.MaxStackLimit)}))
	_, procNil, _ := p.number("max_processes_and_or_threads")
	in.MaxProcesses = int(numeric("max_processes_and_or_threads", float64(cfg.MaxProcesses), bound{">", 0, float64(cfg.MaxMaxProcesses), strconv.Itoa(cfg.MaxMaxProcesses)}))
	in.PerProcessTime, _ = p.boolean("enable_per_process_and_thread_time_limit")
	in.PerProcessMemory, _ = p.boolean("enable_per_process_and_thread_memory_limit")
	in.MaxFileSize = int(numeric("max_file_size", float64(cfg.MaxFileSize), bound{">=", 0, float64(cfg.MaxMaxFileSize), strconv.Itoa(cfg.MaxMaxFileSize)}))
	in.RedirectStderr, _ = p.boolean("redirect_stderr_to_stdout")
	in.EnableNetwork, _ = p.boolean("enable_network")

	opt := func(name string) *string {
		s, ok := p.scalar(name)
		if !ok {
			return nil
		}
		if n := len([]rune(s)); n > maxOptionChars {
			errs.add(name, fmt.Sprintf("is too long (maximum is %d characters)", maxOptionChars))
		}
		return &s
	}
	in.CompilerOptions = opt("compiler_options")
	in.CommandLineArguments = opt("command_line_arguments")
	if s, ok := p.scalar("callback_url"); ok {
		in.CallbackURL = &s
	}

	// Checks that need the language.
	switch {
	case !langPresent: // Judge0 says both: it looks up the missing id too
		errs.add("language_id", "language with id  doesn't exist")
	case lang == nil:
		errs.add("language_id", fmt.Sprintf("language with id %d doesn't exist", in.LanguageID))
	}
	if in.CompilerOptions != nil && strings.TrimSpace(*in.CompilerOptions) != "" && lang != nil &&
		(lang.project() || len(lang.Entry.Compile) == 0) {
		errs.add("compiler_options", "setting compiler options is only allowed for compiled languages")
	}
	if in.CallbackURL != nil && strings.TrimSpace(*in.CallbackURL) != "" {
		if msg := h.checkCallback(*in.CallbackURL); msg != "" {
			errs.add("callback_url", msg)
		}
	}
	if in.EnableNetwork {
		if h.deps.Network == nil || h.deps.Network(tenant, &sandbox.RunRequest{}) != nil {
			errs.add("enable_network", "enabling network is not allowed")
		}
	}
	if !errs.empty() {
		return in, errs
	}

	// What the runtime needs wins over Judge0's defaults when the client
	// left the limit to the server: a JVM does not start in 125 MB.
	if e := lang.Entry; e != nil {
		if memNil && int(e.Limits.MemoryBytes>>10) > in.MemoryLimit {
			in.MemoryLimit = int(e.Limits.MemoryBytes >> 10)
		}
		if procNil && int(e.Limits.Procs) > in.MaxProcesses {
			in.MaxProcesses = int(e.Limits.Procs)
		}
	}
	// The files must unpack, and everything must fit one run.
	files, msg := h.additionalFiles(in.AdditionalFiles, lang)
	if msg == "" && project && len(files) == 0 {
		msg = "has no files"
	}
	if msg != "" {
		errs.add("additional_files", msg)
		return in, errs
	}
	total := len(in.SourceCode) + len(in.Stdin)
	for _, f := range files {
		total += len(f.Content)
	}
	if total > sandbox.MaxRunBytes {
		field := "source_code"
		switch {
		case len(in.Stdin) > len(in.SourceCode) && len(in.Stdin) > total-len(in.Stdin)-len(in.SourceCode):
			field = "stdin"
		case len(in.AdditionalFiles) > 0 && total-len(in.SourceCode)-len(in.Stdin) > len(in.SourceCode):
			field = "additional_files"
		}
		errs.add(field, fmt.Sprintf("is too large: the program, its files and stdin total %d bytes, at most %d", total, sandbox.MaxRunBytes))
		return in, errs
	}
	return in, nil
}

func hasMsg(e *errorsByField, field string) bool { _, ok := e.msgs[field]; return ok }

// checkCallback says what is wrong with a callback URL, or "".
func (h *Handler) checkCallback(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || len(raw) > 2048 || u.User != nil {
		return "is not a valid http or https URL"
	}
	if !h.deps.CallbackAllowed(u.Hostname()) {
		return fmt.Sprintf("setting callback to host %s is not allowed", u.Hostname())
	}
	return ""
}

// rubyToI is Ruby's String#to_i: an optional sign and the leading
// digits; 0 if none.
func rubyToI(s string) int {
	s = strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(s, 64); err == nil && f >= -1e9 && f <= 1e9 {
		return int(f)
	}
	i := 0
	if i < len(s) && (s[i] == '-' || s[i] == '+') {
		i++
	}
	j := i
	for j < len(s) && s[j] >= '0' && s[j] <= '9' {
		j++
	}
	n, err := strconv.Atoi(s[:j])
	if err != nil || n > 1e9 || n < -1e9 {
		return 0
	}
	return n
}

// rubyNum prints a number as Ruby prints it: floats always with a
// fraction ("15.0"), integers without.
func rubyNum(v float64, float bool) string {
	s := strconv.FormatFloat(v, 'f', -1, 64)
	if float && !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	return s
}

// rubyTime is how Rails renders a time in JSON.
func rubyTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}
