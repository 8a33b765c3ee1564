package judge0

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/firesandbox/firesandbox/internal/state"
)

// fieldNames are the attributes a submission has, in Judge0 CE 1.13.1's
// order (its table's columns, then status and language).
var fieldNames = []string{
	"source_code", "language_id", "stdin", "expected_output", "stdout", "status_id", "created_at", "finished_at",
	"time", "memory", "stderr", "token", "number_of_runs", "cpu_time_limit", "cpu_extra_time", "wall_time_limit",
	"memory_limit", "stack_limit", "max_processes_and_or_threads", "enable_per_process_and_thread_time_limit",
	"enable_per_process_and_thread_memory_limit", "max_file_size", "compile_output", "exit_code", "exit_signal",
	"message", "wall_time", "compiler_options", "command_line_arguments", "redirect_stderr_to_stdout",
	"callback_url", "additional_files", "enable_network", "status", "language",
}

// defaultFields are those sent when a request names none.
var defaultFields = []string{"token", "time", "memory", "stdout", "stderr", "compile_output", "message", "status"}

var knownField = func() map[string]bool {
	m := map[string]bool{}
	for _, f := range fieldNames {
		m[f] = true
	}
	return m
}()

// parseFields reads the fields parameter as Judge0 does: comma-separated
// names, "*" for all, the defaults when none is valid. It returns the
// names it does not know too.
func parseFields(raw string) (fields, invalid []string) {
	parts := strings.Split(raw, ",")
	for len(parts) > 0 && parts[len(parts)-1] == "" { // as Ruby's split
		parts = parts[:len(parts)-1]
	}
	all, seen := false, map[string]bool{}
	for _, f := range parts {
		switch {
		case f == "*":
			all = true
		case !knownField[f]:
			invalid = append(invalid, f)
		case !seen[f]:
			seen[f] = true
			fields = append(fields, f)
		}
	}
	if all {
		return fieldNames, invalid
	}
	if len(fields) == 0 {
		fields = defaultFields
	}
	return fields, invalid
}

// invalidFieldsMessage is Judge0's 400 for unknown field names.
func invalidFieldsMessage(invalid []string) string {
	return fmt.Sprintf("invalid fields: [%s]", strings.Join(invalid, ", "))
}

// view is a stored submission, decoded.
type view struct {
	sub state.Submission
	in  input
	res result
}

func decodeView(sub state.Submission) (*view, error) {
	v := &view{sub: sub}
	if err := json.Unmarshal(sub.Request, &v.in); err != nil {
		return nil, fmt.Errorf("decode submission %s: %w", sub.Token, err)
	}
	if len(sub.Result) > 0 {
		if err := json.Unmarshal(sub.Result, &v.res); err != nil {
			return nil, fmt.Errorf("decode submission %s result: %w", sub.Token, err)
		}
	}
	return v, nil
}

// render is a submission's JSON with the fields asked for; b64 sends
// text attributes in base64 (as Ruby's encode64 writes it), else a text
// that is not UTF-8 is errNotUTF8.
func (h *Handler) render(v *view, fields []string, b64 bool) (object, error) {
	text := func(b []byte) (any, error) {
		switch {
		case b == nil:
			return nil, nil
		case b64:
			return encode64(b), nil
		case !utf8.Valid(b):
			return nil, errNotUTF8
		}
		return string(b), nil
	}
	in, res := &v.in, &v.res
	o := make(object, 0, len(fields))
	for _, f := range fields {
		var val any
		var err error
		switch f {
		case "source_code":
			val, err = text(in.SourceCode)
		case "language_id":
			val = in.LanguageID
		case "stdin":
			val, err = text(in.Stdin)
		case "expected_output":
			val, err = text(in.ExpectedOutput)
		case "stdout":
			val, err = text(res.Stdout)
		case "status_id":
			val = v.sub.Status
		case "created_at":
			val = rubyTime(v.sub.CreatedAt)
		case "finished_at":
			val = rubyTime(v.sub.FinishedAt)
		case "time":
			val = decimal(res.Time)
		case "memory":
			val = res.Memory
		case "stderr":
			val, err = text(res.Stderr)
		case "token":
			val = v.sub.Token
		case "number_of_runs":
			val = in.NumberOfRuns
		case "cpu_time_limit":
			val = decimal(&in.CPUTimeLimit)
		case "cpu_extra_time":
			val = decimal(&in.CPUExtraTime)
		case "wall_time_limit":
			val = decimal(&in.WallTimeLimit)
		case "memory_limit":
			val = in.MemoryLimit
		case "stack_limit":
			val = in.StackLimit
		case "max_processes_and_or_threads":
			val = in.MaxProcesses
		case "enable_per_process_and_thread_time_limit":
			val = in.PerProcessTime
		case "enable_per_process_and_thread_memory_limit":
			val = in.PerProcessMemory
		case "max_file_size":
			val = in.MaxFileSize
		case "compile_output":
			val, err = text(res.CompileOutput)
		case "exit_code":
			val = res.ExitCode
		case "exit_signal":
			val = res.ExitSignal
		case "message":
			val, err = text(res.Message)
		case "wall_time":
			val = decimal(res.WallTime)
		case "compiler_options":
			val = in.CompilerOptions
		case "command_line_arguments":
			val = in.CommandLineArguments
		case "redirect_stderr_to_stdout":
			val = in.RedirectStderr
		case "callback_url":
			val = in.CallbackURL
		case "additional_files":
			if in.AdditionalFiles != nil {
				val = encode64(in.AdditionalFiles)
			}
		case "enable_network":
			val = in.EnableNetwork
		case "status":
			val = object{{"id", v.sub.Status}, {"description", statusName(v.sub.Status)}}
		case "language":
			name := any(nil)
			if l := h.langs.get(in.LanguageID); l != nil {
				name = l.Name
			}
			val = object{{"id", in.LanguageID}, {"name", name}}
		}
		if err != nil {
			return nil, err
		}
		o = append(o, member{f, val})
	}
	return o, nil
}

// decimal renders a decimal column as Rails does: a string ("0.045",
// "5.0"), or null.
func decimal(f *float64) any {
	if f == nil {
		return nil
	}
	return rubyNum(*f, true)
}
