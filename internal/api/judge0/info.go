package judge0

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
)

func (h *Handler) handleStatuses(w http.ResponseWriter, r *http.Request) {
	out := make([]object, 0, len(statusNames)-1)
	for id := 1; id < len(statusNames); id++ {
		out = append(out, object{{"id", id}, {"description", statusNames[id]}})
	}
	writeJSON(w, http.StatusOK, out)
}

func orNull(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func (h *Handler) handleAbout(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, object{{"version", h.cfg.Version}, {"homepage", orNull(h.cfg.Homepage)},
		{"source_code", orNull(h.cfg.SourceCode)}, {"maintainer", orNull(h.cfg.Maintainer)}})
}

func (h *Handler) handleVersion(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte(h.cfg.Version))
}

// float is a number written as Ruby writes a Float: with a fraction.
func float(v float64) json.Number { return json.Number(rubyNum(v, true)) }

func (h *Handler) handleConfigInfo(w http.ResponseWriter, r *http.Request) {
	c := h.cfg
	writeJSON(w, http.StatusOK, object{
		{"maintenance_mode", false},
		{"enable_wait_result", !c.DisableWait},
		{"enable_compiler_options", true},
		{"allowed_languages_for_compile_options", []string{}},
		{"enable_command_line_arguments", true},
		{"enable_submission_delete", !c.DisableDelete},
		{"enable_callbacks", true}, // to the hosts the server's policy allows
		{"callbacks_max_tries", c.CallbacksMaxTries},
		{"callbacks_timeout", float(c.CallbacksTimeout.Seconds())},
		{"enable_additional_files", true},
		{"max_queue_size", c.MaxQueueSize},
		{"cpu_time_limit", float(c.CPUTimeLimit)},
		{"max_cpu_time_limit", float(c.MaxCPUTimeLimit)},
		{"cpu_extra_time", float(c.CPUExtraTime)},
		{"max_cpu_extra_time", float(c.MaxCPUExtraTime)},
		{"wall_time_limit", float(c.WallTimeLimit)},
		{"max_wall_time_limit", float(c.MaxWallTimeLimit)},
		{"memory_limit", c.MemoryLimit},
		{"max_memory_limit", c.MaxMemoryLimit},
		{"stack_limit", c.StackLimit},
		{"max_stack_limit", c.MaxStackLimit},
		{"max_processes_and_or_threads", c.MaxProcesses},
		{"max_max_processes_and_or_threads", c.MaxMaxProcesses},
		{"enable_per_process_and_thread_time_limit", false},
		{"allow_enable_per_process_and_thread_time_limit", true},
		{"enable_per_process_and_thread_memory_limit", false},
		{"allow_enable_per_process_and_thread_memory_limit", true},
		{"max_file_size", c.MaxFileSize},
		{"max_max_file_size", c.MaxMaxFileSize},
		{"number_of_runs", c.NumberOfRuns},
		{"max_number_of_runs", c.MaxNumberOfRuns},
		{"redirect_stderr_to_stdout", false},
		{"max_extract_size", c.MaxExtractSize},
		{"enable_batched_submissions", true},
		{"max_submission_batch_size", c.MaxBatchSize},
		{"submission_cache_duration", float(0)}, // no cache: a GET sees the newest state
		{"use_docs_as_homepage", false},
		{"allow_enable_network", h.deps.Network != nil},
		{"enable_network", false},
	})
}

func (h *Handler) handleSystemInfo(w http.ResponseWriter, r *http.Request) {
	pairs := h.deps.SystemInfo()
	o := make(object, len(pairs))
	for i, p := range pairs {
		o[i] = member{p[0], p[1]}
	}
	writeJSON(w, http.StatusOK, o)
}

// procSystemInfo answers /system_info as Judge0 does (lscpu's fields and
// free's totals), from /proc.
func procSystemInfo() [][2]string {
	arch := runtime.GOARCH
	switch arch {
	case "amd64":
		arch = "x86_64"
	case "arm64":
		arch = "aarch64"
	}
	o := [][2]string{{"Architecture", arch}, {"Byte Order", "Little Endian"}}
	cpus, vendor, model := 0, "", ""
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "processor":
				cpus++
			case "vendor_id":
				vendor = strings.TrimSpace(v)
			case "model name":
				model = strings.TrimSpace(v)
			}
		}
		f.Close()
	}
	if cpus == 0 {
		cpus = runtime.NumCPU()
	}
	o = append(o, [2]string{"CPU(s)", strconv.Itoa(cpus)})
	if vendor != "" {
		o = append(o, [2]string{"Vendor ID", vendor})
	}
	if model != "" {
		o = append(o, [2]string{"Model name", model})
	}
	mem, swap := int64(-1), int64(-1)
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var kb int64
			if n, _ := fmt.Sscanf(sc.Text(), "MemTotal: %d kB", &kb); n == 1 {
				mem = kb << 10
			}
			if n, _ := fmt.Sscanf(sc.Text(), "SwapTotal: %d kB", &kb); n == 1 {
				swap = kb << 10
			}
		}
		f.Close()
	}
	if mem >= 0 {
		o = append(o, [2]string{"Mem", humanBytes(mem)})
	}
	if swap >= 0 {
		o = append(o, [2]string{"Swap", humanBytes(swap)})
	}
	return o
}

// humanBytes writes a size as `free -h` does: "23Gi", "1.5Gi", "0B".
func humanBytes(n int64) string {
	units := []string{"B", "Ki", "Mi", "Gi", "Ti", "Pi"}
	v, i := float64(n), 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%dB", n)
	}
	if v < 10 {
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v), ".0") + units[i]
	}
	return fmt.Sprintf("%.0f%s", v, units[i])
}
