package api

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/api/client"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// The client's Run is byte-exact: stdin and output that are not UTF-8
// arrive as they were, each stream on its own writer.
func TestClientRunByteExact(t *testing.T) {
	fs := newFakeServer(t, Config{}, sandbox.ServiceConfig{})
	c := client.New(fs.url, "")
	var stdout, stderr, compile bytes.Buffer
	stdin := "in\xfe\n"
	res, err := c.Run(context.Background(), client.RunIn{Language: "python",
		Files: []client.FileIn{{Content: "Ynl0ZXM=", Encoding: "base64"}}, // "bytes"
		Stdin: stdin}, &stdout, &stderr, &compile)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := stdout.String(), stdin+"\xa9\n"; got != want {
		t.Errorf("stdout %q, want %q", got, want)
	}
	if got, want := stderr.String(), "\xff\x00\xc3"; got != want {
		t.Errorf("stderr %q, want %q", got, want)
	}
	if compile.Len() != 0 || res.ExitCode != 3 || res.Status != "RE" || res.Stage != "run" || res.Language != "python" {
		t.Errorf("compile output %q, result %+v", compile.String(), res)
	}
	if len(res.Timings) == 0 || res.Timings[0].Name != "start" {
		t.Errorf("timings %+v: want the VM's start parts", res.Timings)
	}

	// base64 is for the stream; other encodings are refused.
	for path, body := range map[string]string{
		"/v1/run":        `{"language":"python","code":"print hi","encoding":"base64"}`,
		"/v1/run/stream": `{"language":"python","code":"print hi","encoding":"hex"}`,
	} {
		resp, err := http.Post(fs.url+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(b), "encoding") {
			t.Errorf("%s %s: %d %s, want a 400 about the encoding", path, body, resp.StatusCode, b)
		}
	}

	// An error before the run is the server's message.
	_, err = c.Run(context.Background(), client.RunIn{Language: "klingon", Files: []client.FileIn{{Content: "eA==", Encoding: "base64"}}}, &stdout, &stderr, &compile)
	if err == nil || !strings.Contains(err.Error(), "klingon") {
		t.Errorf("unknown language: %v", err)
	}
}

// Over the owner-only unix socket a run may ask for the limits a run in
// the CLI's own process may: serve's caps are for TCP clients.
func TestLocalRunLimits(t *testing.T) {
	fs := newFakeServer(t, Config{MaxTimeout: 2 * time.Second}, sandbox.ServiceConfig{})
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go fs.srv.Serve(ln)
	in := client.RunIn{Language: "python", Files: []client.FileIn{{Content: "print ok"}}, Limits: client.Limits{TimeoutMillis: 60_000}}
	var out bytes.Buffer
	if _, err := client.New(fs.url, "").Run(context.Background(), in, &out, &out, &out); err == nil || !strings.Contains(err.Error(), "at most 2000") {
		t.Errorf("over TCP, a timeout past --max-timeout: %v", err)
	}
	res, err := client.New("unix://"+sock, "").Run(context.Background(), in, &out, &out, &out)
	if err != nil || res.ExitCode != 0 || out.String() != "ok\n" {
		t.Errorf("over the socket: %+v %v, output %q", res, err, out.String())
	}
	in.Limits.TimeoutMillis = 1 << 40
	if _, err := client.New("unix://"+sock, "").Run(context.Background(), in, &out, &out, &out); err == nil || !strings.Contains(err.Error(), "timeout_ms") {
		t.Errorf("over the socket, past the agent's maximum: %v", err)
	}
}
