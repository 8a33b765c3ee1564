package fctest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agent"
	"github.com/firesandbox/firesandbox/internal/agentproto"
)

type step struct {
	method, path, body string
	status             int    // 204 or 200 for success, 400 for a fault
	fault              string // substring of fault_message
}

type env struct {
	t      *testing.T
	dir    string
	srv    *Server
	client *http.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"vmlinux", "initrd", "disk0", "vmm.log"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srv := New(Options{ID: "t1", Agent: agent.Config{UID: -1, GID: -1}})
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv.Handler()}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close(); srv.Close() })
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	return &env{t: t, dir: dir, srv: srv, client: &http.Client{Transport: tr, Timeout: 5 * time.Second}}
}

// run performs the steps in order; "$D" in a body is the fixture dir.
func (e *env) run(steps ...step) {
	e.t.Helper()
	for i, s := range steps {
		req, _ := http.NewRequest(s.method, "http://localhost"+s.path, strings.NewReader(strings.ReplaceAll(s.body, "$D", e.dir)))
		resp, err := e.client.Do(req)
		if err != nil {
			e.t.Fatalf("step %d %s %s: %v", i, s.method, s.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != s.status {
			e.t.Fatalf("step %d %s %s %s: status %d (%s), want %d", i, s.method, s.path, s.body, resp.StatusCode, b, s.status)
		}
		if s.status == http.StatusBadRequest {
			var f struct {
				FaultMessage string `json:"fault_message"`
			}
			if json.Unmarshal(b, &f) != nil || f.FaultMessage == "" {
				e.t.Fatalf("step %d: 400 without fault_message: %s", i, b)
			}
			if !strings.Contains(f.FaultMessage, s.fault) {
				e.t.Fatalf("step %d %s %s: fault %q, want it to mention %q", i, s.method, s.path, f.FaultMessage, s.fault)
			}
		}
		if s.status == http.StatusOK && s.fault != "" && !strings.Contains(string(b), s.fault) {
			e.t.Fatalf("step %d %s %s: answer %s lacks %q", i, s.method, s.path, b, s.fault)
		}
	}
}

var (
	machine  = step{"PUT", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 128}`, 204, ""}
	boot     = step{"PUT", "/boot-source", `{"kernel_image_path": "$D/vmlinux", "initrd_path": "$D/initrd", "boot_args": "console=ttyS0 fs.channel=vsock:1024"}`, 204, ""}
	drive    = step{"PUT", "/drives/disk0", `{"drive_id": "disk0", "path_on_host": "$D/disk0", "is_root_device": false, "is_read_only": true}`, 204, ""}
	vsock    = step{"PUT", "/vsock", `{"guest_cid": 3, "uds_path": "$D/v.sock"}`, 204, ""}
	start    = step{"PUT", "/actions", `{"action_type": "InstanceStart"}`, 204, ""}
	pause    = step{"PATCH", "/vm", `{"state": "Paused"}`, 204, ""}
	resume   = step{"PATCH", "/vm", `{"state": "Resumed"}`, 204, ""}
	snapshot = step{"PUT", "/snapshot/create", `{"snapshot_type": "Full", "snapshot_path": "$D/vmstate", "mem_file_path": "$D/memory"}`, 204, ""}
)

func state(s string) step { return step{"GET", "/", "", 200, `"state":"` + s + `"`} }

func fault(method, path, body, msg string) step { return step{method, path, body, 400, msg} }

func TestContract(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"boot", []step{state("Not started"), machine, boot, drive, vsock, start, state("Running")}},
		{"vcpu 0", []step{fault("PUT", "/machine-config", `{"vcpu_count": 0, "mem_size_mib": 128}`, "vCPU number")}},
		{"vcpu 33", []step{fault("PUT", "/machine-config", `{"vcpu_count": 33, "mem_size_mib": 128}`, "vCPU number")}},
		{"odd vcpus with smt", []step{fault("PUT", "/machine-config", `{"vcpu_count": 3, "mem_size_mib": 128, "smt": true}`, "vCPU number")}},
		{"memory 0", []step{fault("PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 0}`, "memory size")}},
		{"missing vcpus", []step{fault("PUT", "/machine-config", `{"mem_size_mib": 128}`, "vcpu_count")}},
		{"unknown field", []step{fault("PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128, "vcpus": 1}`, "unknown field")}},
		{"bad json", []step{fault("PUT", "/machine-config", `{"vcpu_count": `, "deserializing")}},
		{"missing kernel", []step{fault("PUT", "/boot-source", `{"boot_args": "quiet"}`, "kernel_image_path")}},
		{"kernel not found", []step{fault("PUT", "/boot-source", `{"kernel_image_path": "$D/nope"}`, "kernel image")}},
		{"drive id", []step{fault("PUT", "/drives/disk-0", `{"drive_id": "disk-0", "path_on_host": "$D/disk0", "is_root_device": false, "is_read_only": true}`, "alphanumeric")}},
		{"drive id mismatch", []step{fault("PUT", "/drives/a", `{"drive_id": "b", "path_on_host": "$D/disk0", "is_root_device": false, "is_read_only": true}`, "does not match")}},
		{"drive missing root flag", []step{fault("PUT", "/drives/a", `{"drive_id": "a", "path_on_host": "$D/disk0", "is_read_only": true}`, "is_root_device")}},
		{"vsock cid", []step{fault("PUT", "/vsock", `{"guest_cid": 2, "uds_path": "$D/v.sock"}`, "CID")}},
		{"vsock path in use", []step{vsock, fault("PUT", "/vsock", `{"guest_cid": 3, "uds_path": "$D/v.sock"}`, "address already in use")}},
		{"logger needs file", []step{fault("PUT", "/logger", `{"log_path": "$D/nope.log"}`, "open")}},
		{"start without boot source", []step{machine, fault("PUT", "/actions", `{"action_type": "InstanceStart"}`, "kernel")}},
		{"start without machine config", []step{boot, fault("PUT", "/actions", `{"action_type": "InstanceStart"}`, "machine-config")}},
		{"unknown action", []step{fault("PUT", "/actions", `{"action_type": "Reboot"}`, "unknown variant")}},
		{"pre-boot only after start", []step{machine, boot, start,
			fault("PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128}`, "after starting"),
			fault("PUT", "/boot-source", `{"kernel_image_path": "$D/vmlinux"}`, "after starting"),
			fault("PUT", "/drives/disk0", `{"drive_id": "disk0", "path_on_host": "$D/disk0", "is_root_device": false, "is_read_only": true}`, "after starting"),
			fault("PUT", "/vsock", `{"guest_cid": 3, "uds_path": "$D/v2.sock"}`, "after starting"),
			fault("PUT", "/logger", `{"log_path": "$D/vmm.log"}`, "after starting"),
			fault("PUT", "/actions", `{"action_type": "InstanceStart"}`, "after starting"),
		}},
		{"pause before start", []step{fault("PATCH", "/vm", `{"state": "Paused"}`, "before starting")}},
		{"pause resume", []step{machine, boot, start, pause, state("Paused"), pause, resume, state("Running")}},
		{"snapshot while running", []step{machine, boot, start, fault("PUT", "/snapshot/create", `{"snapshot_path": "$D/s", "mem_file_path": "$D/m"}`, "not paused")}},
		{"snapshot before start", []step{fault("PUT", "/snapshot/create", `{"snapshot_path": "$D/s", "mem_file_path": "$D/m"}`, "before starting")}},
		{"diff snapshot without tracking", []step{machine, boot, start, pause, fault("PUT", "/snapshot/create", `{"snapshot_type": "Diff", "snapshot_path": "$D/s", "mem_file_path": "$D/m"}`, "dirty page")}},
		{"snapshot", []step{machine, boot, drive, vsock, start, pause, snapshot, state("Paused")}},
		{"load after configuring", []step{machine, fault("PUT", "/snapshot/load", `{"snapshot_path": "$D/vmstate", "mem_backend": {"backend_type": "File", "backend_path": "$D/memory"}}`, "not allowed")}},
		{"load with both memory fields", []step{fault("PUT", "/snapshot/load", `{"snapshot_path": "$D/vmstate", "mem_file_path": "$D/memory", "mem_backend": {"backend_type": "File", "backend_path": "$D/memory"}}`, "exclusively")}},
		{"load without memory", []step{fault("PUT", "/snapshot/load", `{"snapshot_path": "$D/vmstate"}`, "required")}},
		{"load bad backend", []step{fault("PUT", "/snapshot/load", `{"snapshot_path": "$D/vmstate", "mem_backend": {"backend_type": "Mmap", "backend_path": "$D/memory"}}`, "unknown variant")}},
		{"load missing file", []step{fault("PUT", "/snapshot/load", `{"snapshot_path": "$D/nope", "mem_backend": {"backend_type": "File", "backend_path": "$D/memory"}}`, "snapshot file")}},
		{"unknown path", []step{fault("GET", "/nope", "", "Invalid request")}},
		{"version", []step{{"GET", "/version", "", 200, DefaultVersion}}},
	} {
		t.Run(tc.name, func(t *testing.T) { newEnv(t).run(tc.steps...) })
	}
}

// TestLoadAndVsock snapshots one fake and loads it into a fresh one, then
// talks to the agent through the vsock protocol.
func TestLoadAndVsock(t *testing.T) {
	a := newEnv(t)
	a.run(machine, boot, drive, vsock, start)
	checkAgent(t, filepath.Join(a.dir, "v.sock"))
	a.run(pause, snapshot)

	b := newEnv(t)
	// Same dir layout: the snapshot's absolute paths point into a.dir,
	// where a's vsock socket is still bound, so loading must fail, and
	// end the process, as in Firecracker.
	b.run(step{"PUT", "/logger", `{"log_path": "$D/vmm.log"}`, 204, ""},
		fault("PUT", "/snapshot/load", `{"snapshot_path": "`+a.dir+`/vmstate", "mem_backend": {"backend_type": "File", "backend_path": "`+a.dir+`/memory"}, "resume_vm": true}`, "address already in use"))
	select {
	case code := <-b.srv.Exited():
		if code == 0 {
			t.Fatal("failed load exited 0")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("failed load did not end the fake VMM")
	}

	c := newEnv(t)
	c.run(step{"PUT", "/snapshot/load", `{"snapshot_path": "` + a.dir + `/vmstate", "mem_backend": {"backend_type": "File", "backend_path": "` + a.dir + `/memory"}, "resume_vm": true, "vsock_override": {"uds_path": "$D/v.sock"}}`, 204, ""},
		state("Running"),
		fault("PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128}`, "after starting"))
	checkAgent(t, filepath.Join(c.dir, "v.sock"))
}

func checkAgent(t *testing.T, sock string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A port the guest does not listen on: the connection is closed.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "CONNECT 9\n")
	if line, err := bufio.NewReader(conn).ReadString('\n'); err == nil {
		t.Fatalf("CONNECT to a closed port answered %q", line)
	}
	conn.Close()

	conn, err = net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "CONNECT 1024\n")
	var line []byte
	for b := make([]byte, 1); ; {
		if _, err := conn.Read(b); err != nil {
			t.Fatalf("read CONNECT answer: %v", err)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	if !strings.HasPrefix(string(line), "OK ") {
		t.Fatalf("CONNECT answer %q", line)
	}
	c := agentproto.NewClient(conn)
	defer c.Close()
	if _, err := c.WaitHello(ctx); err != nil {
		t.Fatalf("WaitHello: %v", err)
	}
	var out strings.Builder
	res, err := c.Exec(ctx, agentproto.ExecRequest{Argv: []string{"echo", "hi"}}, &out, nil)
	if err != nil || res.Code != 0 || out.String() != "hi\n" {
		t.Fatalf("echo hi: %v, %+v, %q", err, res, out.String())
	}
}
