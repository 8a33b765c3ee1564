package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
)

// apiClient speaks Firecracker's REST API over its unix socket. It is
// deliberately thin: the SDK's Machine would also manage networking
// (CNI) and the process, which the driver does itself.
type apiClient struct {
	sock string
	hc   *http.Client
}

func newAPIClient(sock string) *apiClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		MaxIdleConnsPerHost: 1,
	}
	return &apiClient{sock: sock, hc: &http.Client{Transport: tr}}
}

func (c *apiClient) close() { c.hc.CloseIdleConnections() }

// do sends one request; in is JSON-encoded when not nil, and a 2xx answer
// is decoded into out when out is not nil.
func (c *apiClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var fault models.Error
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &fault) == nil && fault.FaultMessage != "" {
			msg = fault.FaultMessage
		}
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, FaultMessage: msg}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// Requests newer than the SDK's models (which track an older API).

// memoryBackend is SnapshotLoadParams.mem_backend, which replaced the
// deprecated mem_file_path.
type memoryBackend struct {
	BackendType string `json:"backend_type"` // "File" or "Uffd"
	BackendPath string `json:"backend_path"`
}

// snapshotLoadParams is PUT /snapshot/load with mem_backend.
type snapshotLoadParams struct {
	SnapshotPath string        `json:"snapshot_path"`
	MemBackend   memoryBackend `json:"mem_backend"`
	ResumeVM     bool          `json:"resume_vm,omitempty"`
}
