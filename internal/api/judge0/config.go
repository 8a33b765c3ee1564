package judge0

import (
	"fmt"
	"runtime"
	"time"
)

// Config configures a Handler. Zero fields take Judge0 CE 1.13.1's
// defaults (judge0.conf) unless noted; limits are in Judge0's units
// (seconds, kilobytes).
type Config struct {
	// Workers is how many submissions run at once at most (each also
	// needs a slot of the VM gate); default the number of CPUs.
	Workers int `json:"workers"`
	// MaxQueueSize bounds the submissions waiting to run; more are
	// refused with 503 "queue is full". Default 100.
	MaxQueueSize int `json:"max_queue_size"`
	// MaxBatchSize bounds a batch; default 20.
	MaxBatchSize int `json:"max_submission_batch_size"`
	// DisableWait refuses ?wait=true ("wait not allowed").
	DisableWait bool `json:"disable_wait"`
	// WaitTimeout is how long ?wait=true waits before it answers with the
	// submission as it is then (still queued or processing); default 5m.
	WaitTimeout time.Duration `json:"wait_timeout"`
	// DisableDelete refuses DELETE /submissions/{token} ("delete not
	// allowed"). Judge0 disables deletion by default because its
	// submissions belong to nobody; here each belongs to a tenant, so it
	// is on unless disabled.
	DisableDelete bool `json:"disable_delete"`
	// Retention is how long finished submissions are kept; default 7
	// days, negative forever (Judge0 keeps them forever).
	Retention time.Duration `json:"retention"`
	// MaxBody caps a request body; default 32 MiB.
	MaxBody int64 `json:"max_body"`

	CPUTimeLimit     float64 `json:"cpu_time_limit"`      // default 5
	MaxCPUTimeLimit  float64 `json:"max_cpu_time_limit"`  // default 15
	CPUExtraTime     float64 `json:"cpu_extra_time"`      // default 1
	MaxCPUExtraTime  float64 `json:"max_cpu_extra_time"`  // default 5
	WallTimeLimit    float64 `json:"wall_time_limit"`     // default 10
	MaxWallTimeLimit float64 `json:"max_wall_time_limit"` // default 20
	MemoryLimit      int     `json:"memory_limit"`        // default 128000
	MaxMemoryLimit   int     `json:"max_memory_limit"`    // default 512000
	StackLimit       int     `json:"stack_limit"`         // default 64000
	MaxStackLimit    int     `json:"max_stack_limit"`     // default 128000
	MaxProcesses     int     `json:"max_processes_and_or_threads"`
	MaxMaxProcesses  int     `json:"max_max_processes_and_or_threads"`
	MaxFileSize      int     `json:"max_file_size"`     // default 1024
	MaxMaxFileSize   int     `json:"max_max_file_size"` // default 4096
	NumberOfRuns     int     `json:"number_of_runs"`    // default 1
	MaxNumberOfRuns  int     `json:"max_number_of_runs"`
	MaxExtractSize   int     `json:"max_extract_size"` // additional_files, unpacked; default 10240
	// CallbacksMaxTries and CallbacksTimeout bound callback_url PUTs;
	// defaults 3 and 5s.
	CallbacksMaxTries int           `json:"callbacks_max_tries"`
	CallbacksTimeout  time.Duration `json:"callbacks_timeout"`

	// MultiFileLanguage is the catalog language whose image runs a
	// multi-file program when no file in its archive has the extension of
	// an installed language's program; default bash.
	MultiFileLanguage string `json:"multi_file_language"`

	// Version is what /about reports. Clients pick their language tables
	// by it (Judge0's Python SDK knows "1.13.1"), so it is the Judge0
	// version whose API this is; default 1.13.1.
	Version    string `json:"version"`
	Homepage   string `json:"homepage"`
	SourceCode string `json:"source_code"`
	Maintainer string `json:"maintainer"`
}

func (c *Config) setDefaults() {
	defInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defFloat := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	defInt(&c.Workers, runtime.NumCPU())
	defInt(&c.MaxQueueSize, 100)
	defInt(&c.MaxBatchSize, 20)
	if c.WaitTimeout == 0 {
		c.WaitTimeout = 5 * time.Minute
	}
	if c.Retention == 0 {
		c.Retention = 7 * 24 * time.Hour
	}
	if c.MaxBody == 0 {
		c.MaxBody = 32 << 20
	}
	defFloat(&c.CPUTimeLimit, 5)
	defFloat(&c.MaxCPUTimeLimit, 15)
	defFloat(&c.CPUExtraTime, 1)
	defFloat(&c.MaxCPUExtraTime, 5)
	defFloat(&c.WallTimeLimit, 10)
	defFloat(&c.MaxWallTimeLimit, 20)
	defInt(&c.MemoryLimit, 128000)
	defInt(&c.MaxMemoryLimit, 512000)
	defInt(&c.StackLimit, 64000)
	defInt(&c.MaxStackLimit, 128000)
	defInt(&c.MaxProcesses, 60)
	defInt(&c.MaxMaxProcesses, 120)
	defInt(&c.MaxFileSize, 1024)
	defInt(&c.MaxMaxFileSize, 4096)
	defInt(&c.NumberOfRuns, 1)
	defInt(&c.MaxNumberOfRuns, 20)
	defInt(&c.MaxExtractSize, 10240)
	defInt(&c.CallbacksMaxTries, 3)
	if c.CallbacksTimeout == 0 {
		c.CallbacksTimeout = 5 * time.Second
	}
	if c.MultiFileLanguage == "" {
		c.MultiFileLanguage = "bash"
	}
	if c.Version == "" {
		c.Version = "1.13.1"
	}
}

// Validate checks a Config.
func (c *Config) Validate() error {
	d := *c
	d.setDefaults()
	switch {
	case c.Workers < 0 || c.MaxQueueSize < 0 || c.MaxBatchSize < 0 || c.WaitTimeout < 0 || c.MaxBody < 0 ||
		c.CallbacksMaxTries < 0 || c.CallbacksTimeout < 0:
		return fmt.Errorf("%w: sizes and times must not be negative", ErrBadConfig)
	case d.Workers > 256 || d.MaxBatchSize > 1000 || d.MaxQueueSize > 1_000_000:
		return fmt.Errorf("%w: workers %d, batch %d, queue %d: too many", ErrBadConfig, d.Workers, d.MaxBatchSize, d.MaxQueueSize)
	case d.CPUTimeLimit < 0 || d.CPUTimeLimit > d.MaxCPUTimeLimit, d.CPUExtraTime < 0 || d.CPUExtraTime > d.MaxCPUExtraTime,
		d.WallTimeLimit < 1 || d.WallTimeLimit > d.MaxWallTimeLimit, d.MaxWallTimeLimit > 3600:
		return fmt.Errorf("%w: time limits: want 0 <= default <= max (wall at least 1 s, at most 1 h)", ErrBadConfig)
	case d.MemoryLimit < 2048 || d.MemoryLimit > d.MaxMemoryLimit, d.StackLimit < 0 || d.StackLimit > d.MaxStackLimit,
		d.MaxProcesses <= 0 || d.MaxProcesses > d.MaxMaxProcesses, d.MaxFileSize < 0 || d.MaxFileSize > d.MaxMaxFileSize,
		d.NumberOfRuns <= 0 || d.NumberOfRuns > d.MaxNumberOfRuns, d.MaxExtractSize <= 0:
		return fmt.Errorf("%w: limits: want default <= max (memory at least 2048 KB)", ErrBadConfig)
	case d.MaxMaxFileSize > 64<<10 || d.MaxNumberOfRuns > 100 || d.MaxExtractSize > 64<<10 || d.MaxMaxProcesses > 4096:
		return fmt.Errorf("%w: a maximum is beyond what the sandbox allows", ErrBadConfig)
	}
	return nil
}
