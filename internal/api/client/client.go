// Package client speaks firesandbox's native /v1 API, over TCP or the
// server's unix socket. The CLI uses it for everything that goes through
// a server, so a command behaves the same whether it talks to a running
// `firesandbox serve` or to one it started in-process.
//
//	c := client.New("unix:///run/firesandbox/api.sock", "")
//	sb, err := c.CreateSandbox(ctx, client.CreateIn{Language: "python"})
//	res, err := c.Exec(ctx, sb.ID, client.ExecIn{Cmd: []string{"ls"}}, os.Stdout, os.Stderr)
//	run, err := c.Run(ctx, client.RunIn{Language: "python", Files: []client.FileIn{{Content: "print(1)"}}}, os.Stdout, os.Stderr, os.Stderr)
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Error is an error answer from the server.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// ErrNotFound matches an Error with status 404.
var ErrNotFound = errors.New("not found")

// Is lets errors.Is(err, ErrNotFound) match a 404.
func (e *Error) Is(target error) bool {
	return target == ErrNotFound && e.Status == http.StatusNotFound
}

// Client is a connection to one server.
type Client struct {
	base string
	key  string
	hc   *http.Client
}

// New returns a client for addr: "http://host:port" or "unix:///path".
func New(addr, apiKey string) *Client {
	c := &Client{base: strings.TrimRight(addr, "/"), key: apiKey, hc: &http.Client{}}
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		c.base = "http://firesandbox"
		c.hc.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p)
		}}
	}
	return c
}

func (c *Client) do(ctx context.Context, method, path string, in any, accept string) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err() // the caller's cancel, not the server's failure
		}
		return nil, err
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct{ Error, Code, Message string }
		_ = json.Unmarshal(b, &e)
		msg := e.Error
		if msg == "" {
			msg = e.Message
		}
		if msg == "" {
			msg = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		return nil, &Error{Status: resp.StatusCode, Code: e.Code, Message: msg}
	}
	return resp, nil
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.do(ctx, method, path, in, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Sandbox describes a sandbox (GET /v1/sandboxes/{id}).
type Sandbox struct {
	ID         string            `json:"id"`
	Language   string            `json:"language"`
	Version    string            `json:"version"`
	State      string            `json:"state"`
	VCPUs      int               `json:"vcpus"`
	MemoryMiB  int               `json:"memory_mib"`
	DiskMiB    int               `json:"disk_mib,omitempty"`
	Reason     string            `json:"reason,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
	LastUsedAt time.Time         `json:"last_used_at"`
	// ExpiresAt is the end of its lifetime, nil while paused.
	ExpiresAt    *time.Time `json:"expires_at,omitempty"`
	OnTimeout    string     `json:"on_timeout,omitempty"`
	IdleTimeoutS int64      `json:"idle_timeout_s,omitempty"`
	Parent       string     `json:"parent,omitempty"`
}

// CreateIn is POST /v1/sandboxes's request.
type CreateIn struct {
	Language  string            `json:"language"`
	Version   string            `json:"version,omitempty"`
	VCPUs     int               `json:"vcpus,omitempty"`
	MemoryMiB int               `json:"memory_mib,omitempty"`
	DiskMiB   int               `json:"disk_mib,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	// LifetimeS is the sandbox's timeout (0: the server's default);
	// OnTimeout "kill" (default) or "pause"; IdleTimeoutS pauses it
	// after that long unused.
	LifetimeS    int64  `json:"lifetime_s,omitempty"`
	OnTimeout    string `json:"on_timeout,omitempty"`
	IdleTimeoutS int64  `json:"idle_timeout_s,omitempty"`
}

// CreateSandbox creates a sandbox.
func (c *Client) CreateSandbox(ctx context.Context, in CreateIn) (Sandbox, error) {
	var sb Sandbox
	return sb, c.call(ctx, "POST", "/v1/sandboxes", in, &sb)
}

// Sandboxes lists the caller's sandboxes.
func (c *Client) Sandboxes(ctx context.Context) ([]Sandbox, error) {
	var out struct{ Sandboxes []Sandbox }
	return out.Sandboxes, c.call(ctx, "GET", "/v1/sandboxes", nil, &out)
}

// Sandbox returns one sandbox.
func (c *Client) Sandbox(ctx context.Context, id string) (Sandbox, error) {
	var sb Sandbox
	return sb, c.call(ctx, "GET", "/v1/sandboxes/"+url.PathEscape(id), nil, &sb)
}

// Hibernate pauses a sandbox (POST .../pause).
func (c *Client) Hibernate(ctx context.Context, id string) (Sandbox, error) {
	var sb Sandbox
	return sb, c.call(ctx, "POST", "/v1/sandboxes/"+url.PathEscape(id)+"/pause", struct{}{}, &sb)
}

// Resume resumes a sandbox.
func (c *Client) Resume(ctx context.Context, id string) (Sandbox, error) {
	var sb Sandbox
	return sb, c.call(ctx, "POST", "/v1/sandboxes/"+url.PathEscape(id)+"/resume", struct{}{}, &sb)
}

// Fork makes count children of a running sandbox.
func (c *Client) Fork(ctx context.Context, id string, count int) ([]Sandbox, error) {
	var out struct{ Sandboxes []Sandbox }
	return out.Sandboxes, c.call(ctx, "POST", "/v1/sandboxes/"+url.PathEscape(id)+"/fork", map[string]int{"count": count}, &out)
}

// SetTimeout ends a sandbox d from now (whole seconds).
func (c *Client) SetTimeout(ctx context.Context, id string, d time.Duration) (Sandbox, error) {
	var sb Sandbox
	return sb, c.call(ctx, "POST", "/v1/sandboxes/"+url.PathEscape(id)+"/timeout", map[string]int64{"timeout_s": int64(d / time.Second)}, &sb)
}

// Delete deletes a sandbox.
func (c *Client) Delete(ctx context.Context, id string) error {
	return c.call(ctx, "DELETE", "/v1/sandboxes/"+url.PathEscape(id), nil, nil)
}

// ExecIn is a command to run in a sandbox.
type ExecIn struct {
	Cmd       []string          `json:"cmd,omitempty"`
	Command   string            `json:"command,omitempty"`
	Stdin     string            `json:"stdin,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	Cwd       string            `json:"cwd,omitempty"`
	TimeoutMS int64             `json:"timeout_ms,omitempty"`
}

// Result is how a command ended.
type Result struct {
	ExitCode   int    `json:"exit_code"`
	Signal     string `json:"signal,omitempty"`
	Status     string `json:"status,omitempty"`
	Message    string `json:"message,omitempty"`
	OK         bool   `json:"ok"`
	WallMillis int64  `json:"wall_ms"`
}

// Exec runs a command in a sandbox, streaming its output to stdout and
// stderr as it comes.
func (c *Client) Exec(ctx context.Context, id string, in ExecIn, stdout, stderr io.Writer) (*Result, error) {
	var r Result
	err := c.stream(ctx, "exec", "/v1/sandboxes/"+url.PathEscape(id)+"/exec/stream", in, func(_, stream string) io.Writer {
		if stream == "stderr" {
			return stderr
		}
		return stdout
	}, &r)
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// stream posts in to a streaming endpoint and writes its output events to
// the writer out picks for their stage and stream (nil drops them), until
// the result event, decoded into result.
func (c *Client) stream(ctx context.Context, what, path string, in any, out func(stage, stream string) io.Writer, result any) error {
	resp, err := c.do(ctx, "POST", path, in, "application/x-ndjson")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxEvent)
	for sc.Scan() {
		var ev struct {
			Type, Stage, Stream, Data, Encoding, Error, Code string
			Result                                           json.RawMessage
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("%s: bad event: %w", what, err)
		}
		switch ev.Type {
		case "output":
			data := []byte(ev.Data)
			if ev.Encoding == "base64" {
				if data, err = base64.StdEncoding.DecodeString(ev.Data); err != nil {
					return fmt.Errorf("%s: bad output event: %w", what, err)
				}
			}
			if w := out(ev.Stage, ev.Stream); w != nil {
				if _, err := w.Write(data); err != nil {
					return err
				}
			}
		case "result":
			if err := json.Unmarshal(ev.Result, result); err != nil {
				return fmt.Errorf("%s: bad result: %w", what, err)
			}
			return nil
		case "error":
			return &Error{Status: http.StatusInternalServerError, Code: ev.Code, Message: ev.Error}
		}
	}
	if err := sc.Err(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: the stream ended without a result", what)
}

// maxEvent bounds one event of a stream: the server sends output in the
// chunks the guest's agent delivers, far smaller.
const maxEvent = 8 << 20

// RunIn is a one-shot run (POST /v1/run/stream). Files' first is the
// program.
type RunIn struct {
	Language string   `json:"language"`
	Version  string   `json:"version,omitempty"`
	Files    []FileIn `json:"files"`
	Stdin    string   `json:"stdin,omitempty"`
	Args     []string `json:"args,omitempty"`
	Limits   Limits   `json:"limits"`
}

// Limits are a run's limits; zero fields are the defaults.
type Limits struct {
	TimeoutMillis int64 `json:"timeout_ms,omitempty"`
	MemoryBytes   int64 `json:"memory_bytes,omitempty"`
	OutputBytes   int64 `json:"output_bytes,omitempty"`
	Procs         int64 `json:"procs,omitempty"`
}

// Step is how one step (compile or run) of a run ended.
type Step struct {
	ExitCode    int    `json:"exit_code"`
	Signal      string `json:"signal,omitempty"`
	Status      string `json:"status,omitempty"`
	Message     string `json:"message,omitempty"`
	OK          bool   `json:"ok"`
	WallMillis  int64  `json:"wall_ms"`
	CPUMillis   int64  `json:"cpu_ms"`
	MemoryBytes int64  `json:"memory_bytes"`
	Prewarmed   bool   `json:"prewarmed,omitempty"`
}

// RunResult is how a run ended: the run step's fields at the top, or the
// compile step's if compilation failed (Stage "compile").
type RunResult struct {
	Language string `json:"language"`
	Version  string `json:"version"`
	Stage    string `json:"stage"`
	Step
	Compile     *Step    `json:"compile,omitempty"`
	ReadyMillis int64    `json:"ready_ms"`
	TotalMillis int64    `json:"total_ms"`
	Restored    bool     `json:"restored"`
	Pooled      bool     `json:"pooled"`
	Timings     []Timing `json:"timings,omitempty"`
}

// Timing is one part of a VM's start.
type Timing struct {
	Name   string  `json:"name"`
	Millis float64 `json:"ms"`
}

// Run runs a program once, byte-exact: stdin and the files go as base64,
// and the program's stdout and stderr reach stdout and stderr as it wrote
// them, as they come. The compile step's output goes to compileOut.
func (c *Client) Run(ctx context.Context, in RunIn, stdout, stderr, compileOut io.Writer) (*RunResult, error) {
	body := struct {
		RunIn
		Encoding string `json:"encoding"`
	}{in, "base64"}
	body.Stdin = base64.StdEncoding.EncodeToString([]byte(in.Stdin))
	var r RunResult
	err := c.stream(ctx, "run", "/v1/run/stream", body, func(stage, stream string) io.Writer {
		switch {
		case stage == "compile":
			return compileOut
		case stream == "stderr":
			return stderr
		}
		return stdout
	}, &r)
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// FileIn is a file to upload.
type FileIn struct {
	Path     string `json:"path"`
	Content  string `json:"content"`
	Encoding string `json:"encoding,omitempty"`
}

// Upload writes files into a sandbox (paths relative to its working
// directory).
func (c *Client) Upload(ctx context.Context, id string, files []FileIn) error {
	return c.call(ctx, "POST", "/v1/sandboxes/"+url.PathEscape(id)+"/files", map[string]any{"files": files}, nil)
}

// Download reads one file from a sandbox.
func (c *Client) Download(ctx context.Context, id, path string) ([]byte, error) {
	resp, err := c.do(ctx, "GET", "/v1/sandboxes/"+url.PathEscape(id)+"/files?path="+url.QueryEscape(path), nil, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}
