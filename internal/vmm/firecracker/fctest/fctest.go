// Package fctest is a strict fake of the Firecracker VMM for tests: its
// REST API on a unix socket, its vsock proxy, and a stand-in guest whose
// agent is the real internal/agent server running on the host.
//
// The fake enforces the contract the driver relies on, more strictly than a
// real Firecracker where that catches driver bugs early:
//
//   - pre-boot resources (machine-config, boot-source, drives, vsock,
//     logger, serial) are refused once the instance started or a snapshot
//     was loaded, with 400 {"fault_message": ...};
//   - InstanceStart needs a boot source and a machine config (a real
//     Firecracker would default the shape to 1 vCPU and 128 MiB; a driver
//     that forgot it would boot a machine of the wrong size);
//   - unknown JSON fields, missing required fields and values outside the
//     schema's ranges are refused, and so are resource ids that are not
//     alphanumeric with underscores;
//   - files named in requests must exist, relative paths resolve against
//     the process's working directory, like Firecracker's;
//   - snapshot/create only while Paused; snapshot/load only on a fresh
//     process, and a failed load ends the process, as Firecracker does;
//   - the vsock socket is bound at PUT /vsock (and again at load, at the
//     path the snapshot recorded), so a stale socket fails as it would.
//
// The guest answers vsock CONNECT requests for the port named by
// fs.channel=vsock:PORT on its kernel command line and serves the agent
// protocol there; connections are reset at snapshot creation, and
// handshakes wait while the VM is paused, as with a real guest whose vCPUs
// are stopped.
//
// A test binary becomes a fake firecracker executable by calling Main from
// TestMain when it is re-executed (see MainEnv).
package fctest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/firesandbox/firesandbox/internal/agent"
	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// DefaultVersion is the version the fake reports unless told otherwise.
const DefaultVersion = "1.10.1"

// stateMagic starts every vmstate file the fake writes.
const stateMagic = "fctest-vmstate-v1"

// Options configure a fake instance.
type Options struct {
	// ID is the instance id reported by GET / (firecracker --id).
	ID string
	// Version is reported by GET / and GET /version.
	Version string
	// Root, when set, is prefixed to absolute paths in requests, as if the
	// process ran in a chroot there (a jailed Firecracker).
	Root string
	// Console receives the guest's serial output (Firecracker's stdout).
	Console io.Writer
	// Agent configures the guest agent; the zero value runs commands as
	// the fake's own user without chroot or cgroups.
	Agent agent.Config
}

// Server is one fake Firecracker instance.
type Server struct {
	opts Options

	mu       sync.Mutex
	started  bool // InstanceStart succeeded or a snapshot was loaded
	paused   bool
	resumed  chan struct{} // closed while running; replaced when paused
	machine  *MachineConfig
	boot     *BootSource
	drives   []Drive // in PUT order; a PUT of a known id updates in place
	vsock    *Vsock
	logger   bool
	serial   bool
	vsockLn  net.Listener
	conns    map[net.Conn]bool
	exit     chan int // receives the exit code when the VMM would end
	exitOnce sync.Once
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// The request bodies, as Firecracker's current API defines them. The fake
// decodes with unknown fields disallowed, like Firecracker's serde
// structs; pointers tell a missing field from a zero one.

// MachineConfig is PUT /machine-config.
type MachineConfig struct {
	VcpuCount       *int64  `json:"vcpu_count"`
	MemSizeMib      *int64  `json:"mem_size_mib"`
	Smt             *bool   `json:"smt,omitempty"`
	CPUTemplate     *string `json:"cpu_template,omitempty"`
	TrackDirtyPages *bool   `json:"track_dirty_pages,omitempty"`
	HugePages       *string `json:"huge_pages,omitempty"`
}

// BootSource is PUT /boot-source.
type BootSource struct {
	KernelImagePath *string `json:"kernel_image_path"`
	InitrdPath      *string `json:"initrd_path,omitempty"`
	BootArgs        *string `json:"boot_args,omitempty"`
}

// Drive is PUT /drives/{id}.
type Drive struct {
	DriveID      *string         `json:"drive_id"`
	PathOnHost   *string         `json:"path_on_host,omitempty"`
	IsRootDevice *bool           `json:"is_root_device"`
	IsReadOnly   *bool           `json:"is_read_only,omitempty"`
	Partuuid     *string         `json:"partuuid,omitempty"`
	CacheType    *string         `json:"cache_type,omitempty"`
	IoEngine     *string         `json:"io_engine,omitempty"`
	RateLimiter  json.RawMessage `json:"rate_limiter,omitempty"`
	Socket       *string         `json:"socket,omitempty"`
}

// Vsock is PUT /vsock.
type Vsock struct {
	GuestCid *int64  `json:"guest_cid"`
	UdsPath  *string `json:"uds_path"`
	VsockID  *string `json:"vsock_id,omitempty"`
}

type logger struct {
	Level         *string `json:"level,omitempty"`
	LogPath       *string `json:"log_path,omitempty"`
	ShowLevel     *bool   `json:"show_level,omitempty"`
	ShowLogOrigin *bool   `json:"show_log_origin,omitempty"`
	Module        *string `json:"module,omitempty"`
}

type serialDevice struct {
	SerialOutPath *string         `json:"serial_out_path,omitempty"`
	RateLimiter   json.RawMessage `json:"rate_limiter,omitempty"`
}

type action struct {
	ActionType *string `json:"action_type"`
}

type vmState struct {
	State *string `json:"state"`
}

type snapshotCreate struct {
	SnapshotType *string `json:"snapshot_type,omitempty"`
	SnapshotPath *string `json:"snapshot_path"`
	MemFilePath  *string `json:"mem_file_path"`
	Version      *string `json:"version,omitempty"` // accepted by older releases only
}

type memBackend struct {
	BackendType *string `json:"backend_type"`
	BackendPath *string `json:"backend_path"`
}

type snapshotLoad struct {
	SnapshotPath        *string         `json:"snapshot_path"`
	MemFilePath         *string         `json:"mem_file_path,omitempty"`
	MemBackend          *memBackend     `json:"mem_backend,omitempty"`
	EnableDiffSnapshots *bool           `json:"enable_diff_snapshots,omitempty"`
	TrackDirtyPages     *bool           `json:"track_dirty_pages,omitempty"`
	ResumeVM            *bool           `json:"resume_vm,omitempty"`
	NetworkOverrides    json.RawMessage `json:"network_overrides,omitempty"`
	VsockOverride       *struct {
		UdsPath *string `json:"uds_path"`
	} `json:"vsock_override,omitempty"`
	ClockRealtime *bool `json:"clock_realtime,omitempty"`
}

// savedState is what the fake writes as a vmstate file: enough of the
// configuration to rebuild the instance, as Firecracker's device state is.
type savedState struct {
	Magic   string        `json:"magic"`
	Version string        `json:"version"`
	Machine MachineConfig `json:"machine"`
	Boot    BootSource    `json:"boot"`
	Drives  []Drive       `json:"drives"`
	Vsock   *Vsock        `json:"vsock,omitempty"`
}

// New returns a fake instance in its initial ("Not started") state.
func New(opts Options) *Server {
	if opts.Version == "" {
		opts.Version = DefaultVersion
	}
	if opts.ID == "" {
		opts.ID = "anonymous-instance"
	}
	if opts.Console == nil {
		opts.Console = io.Discard
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		opts:    opts,
		resumed: make(chan struct{}),
		conns:   map[net.Conn]bool{},
		exit:    make(chan int, 1),
		ctx:     ctx,
		cancel:  cancel,
	}
}

// Exited receives an exit code when the fake VMM would end its process: the
// guest rebooted (SendCtrlAltDel) or a snapshot load failed.
func (s *Server) Exited() <-chan int { return s.exit }

// Close stops the guest side: the vsock listener, its connections and the
// agents serving them.
func (s *Server) Close() {
	s.cancel()
	s.mu.Lock()
	if s.vsockLn != nil {
		s.vsockLn.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) end(code int) {
	s.exitOnce.Do(func() { s.exit <- code })
}

func (s *Server) path(p string) string {
	if s.opts.Root != "" && filepath.IsAbs(p) {
		return filepath.Join(s.opts.Root, p)
	}
	return p
}

// Handler serves Firecracker's API.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &apiError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

const notAfterStart = "The requested operation is not supported after starting the microVM."

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	var (
		out any
		err error
	)
	s.mu.Lock()
	switch route := r.Method + " " + r.URL.Path; {
	case route == "GET /":
		out = s.instanceInfo()
	case route == "GET /version":
		out = map[string]string{"firecracker_version": s.opts.Version}
	case route == "GET /machine-config":
		out = s.machine
		if out == nil {
			one, mem := int64(1), int64(128)
			out = MachineConfig{VcpuCount: &one, MemSizeMib: &mem}
		}
	case route == "PUT /machine-config":
		err = s.putMachineConfig(r.Body)
	case route == "PUT /boot-source":
		err = s.putBootSource(r.Body)
	case strings.HasPrefix(route, "PUT /drives/"):
		err = s.putDrive(strings.TrimPrefix(r.URL.Path, "/drives/"), r.Body)
	case route == "PUT /vsock":
		err = s.putVsock(r.Body)
	case route == "PUT /logger":
		err = s.putLogger(r.Body)
	case route == "PUT /serial":
		err = s.putSerial(r.Body)
	case route == "PUT /actions":
		err = s.putAction(r.Body)
	case route == "PATCH /vm":
		err = s.patchVM(r.Body)
	case route == "PUT /snapshot/create":
		err = s.createSnapshot(r.Body)
	case route == "PUT /snapshot/load":
		err = s.loadSnapshot(r.Body)
		if err != nil {
			// Firecracker ends the process after a failed load: its state
			// may be half-built.
			defer s.end(1)
		}
	default:
		err = badRequest("Invalid request method and/or path: %s %s.", r.Method, r.URL.Path)
	}
	s.mu.Unlock()

	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		status := http.StatusBadRequest
		var ae *apiError
		if errors.As(err, &ae) {
			status = ae.status
		}
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": err.Error()})
		return
	}
	if out == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	_ = json.NewEncoder(w).Encode(out)
}

func (s *Server) stateName() string {
	switch {
	case !s.started:
		return "Not started"
	case s.paused:
		return "Paused"
	}
	return "Running"
}

func (s *Server) instanceInfo() map[string]string {
	return map[string]string{
		"app_name":    "Firecracker",
		"id":          s.opts.ID,
		"state":       s.stateName(),
		"vmm_version": s.opts.Version,
	}
}

func decode(body io.Reader, v any) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("An error occurred when deserializing the json body of a request: %v.", err)
	}
	if dec.More() {
		return badRequest("An error occurred when deserializing the json body of a request: trailing data.")
	}
	return nil
}

func (s *Server) preBoot() error {
	if s.started {
		return badRequest(notAfterStart)
	}
	return nil
}

var idRe = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

func checkID(id string) error {
	if !idRe.MatchString(id) {
		return badRequest("API Resource IDs can only contain alphanumeric characters and underscores.")
	}
	return nil
}

func (s *Server) mustExist(what, p string) error {
	if _, err := os.Stat(s.path(p)); err != nil {
		return badRequest("%s: cannot open %s: %v", what, p, err)
	}
	return nil
}

func (s *Server) putMachineConfig(body io.Reader) error {
	if err := s.preBoot(); err != nil {
		return err
	}
	var mc MachineConfig
	if err := decode(body, &mc); err != nil {
		return err
	}
	if mc.VcpuCount == nil || mc.MemSizeMib == nil {
		return badRequest("missing field: vcpu_count and mem_size_mib are required")
	}
	if n := *mc.VcpuCount; n < 1 || n > 32 {
		return badRequest("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	}
	if mc.Smt != nil && *mc.Smt && *mc.VcpuCount > 1 && *mc.VcpuCount%2 == 1 {
		return badRequest("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	}
	if *mc.MemSizeMib < 1 {
		return badRequest("The memory size (MiB) is invalid.")
	}
	if mc.HugePages != nil {
		switch *mc.HugePages {
		case "None", "Transparent", "2M":
		default:
			return badRequest("unknown huge_pages %q", *mc.HugePages)
		}
	}
	s.machine = &mc
	return nil
}

func (s *Server) putBootSource(body io.Reader) error {
	if err := s.preBoot(); err != nil {
		return err
	}
	var bs BootSource
	if err := decode(body, &bs); err != nil {
		return err
	}
	if bs.KernelImagePath == nil || *bs.KernelImagePath == "" {
		return badRequest("missing field `kernel_image_path`")
	}
	if err := s.mustExist("kernel image", *bs.KernelImagePath); err != nil {
		return err
	}
	if bs.InitrdPath != nil {
		if err := s.mustExist("initrd", *bs.InitrdPath); err != nil {
			return err
		}
	}
	if bs.BootArgs != nil && len(*bs.BootArgs) > 4096 {
		return badRequest("kernel command line too long")
	}
	s.boot = &bs
	return nil
}

func (s *Server) putDrive(id string, body io.Reader) error {
	if err := s.preBoot(); err != nil {
		return err
	}
	if err := checkID(id); err != nil {
		return err
	}
	var d Drive
	if err := decode(body, &d); err != nil {
		return err
	}
	if d.DriveID == nil || d.IsRootDevice == nil {
		return badRequest("missing field: drive_id and is_root_device are required")
	}
	if *d.DriveID != id {
		return badRequest("The id from the path does not match the id from the body!")
	}
	if d.Socket != nil {
		return badRequest("fctest: vhost-user block devices are not faked")
	}
	if d.PathOnHost == nil || d.IsReadOnly == nil {
		return badRequest("missing field: path_on_host and is_read_only are required for virtio-block")
	}
	if err := s.mustExist("drive "+id, *d.PathOnHost); err != nil {
		return err
	}
	for _, v := range []struct {
		name string
		val  *string
		ok   []string
	}{{"cache_type", d.CacheType, []string{"Unsafe", "Writeback"}}, {"io_engine", d.IoEngine, []string{"Sync", "Async"}}} {
		if v.val != nil && !contains(v.ok, *v.val) {
			return badRequest("unknown %s %q", v.name, *v.val)
		}
	}
	for i, old := range s.drives {
		if *old.DriveID == id {
			s.drives[i] = d
			return nil
		}
		if *d.IsRootDevice && *old.IsRootDevice {
			return badRequest("A root block device already exists!")
		}
	}
	s.drives = append(s.drives, d)
	return nil
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func (s *Server) putVsock(body io.Reader) error {
	if err := s.preBoot(); err != nil {
		return err
	}
	var v Vsock
	if err := decode(body, &v); err != nil {
		return err
	}
	if v.GuestCid == nil || v.UdsPath == nil {
		return badRequest("missing field: guest_cid and uds_path are required")
	}
	if *v.GuestCid < 3 || *v.GuestCid > 0xffffffff {
		return badRequest("Invalid guest CID: %d", *v.GuestCid)
	}
	if err := s.bindVsock(*v.UdsPath); err != nil {
		return err
	}
	s.vsock = &v
	return nil
}

func (s *Server) putLogger(body io.Reader) error {
	// Logger may be configured before a snapshot load, so it does not
	// count as configuring the VM; it still cannot change after start.
	if err := s.preBoot(); err != nil {
		return err
	}
	var l logger
	if err := decode(body, &l); err != nil {
		return err
	}
	if l.Level != nil && !contains([]string{"error", "warning", "warn", "info", "debug", "trace", "off"}, strings.ToLower(*l.Level)) {
		return badRequest("Invalid log level: %s", *l.Level)
	}
	if l.LogPath != nil {
		// Firecracker opens the log without creating it.
		f, err := os.OpenFile(s.path(*l.LogPath), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return badRequest("Failed to open target file: %v", err)
		}
		fmt.Fprintf(f, "fctest: logger configured (instance %s)\n", s.opts.ID)
		f.Close()
	}
	s.logger = true
	return nil
}

func (s *Server) putSerial(body io.Reader) error {
	if err := s.preBoot(); err != nil {
		return err
	}
	var sd serialDevice
	if err := decode(body, &sd); err != nil {
		return err
	}
	s.serial = true
	return nil
}

func (s *Server) putAction(body io.Reader) error {
	var a action
	if err := decode(body, &a); err != nil {
		return err
	}
	if a.ActionType == nil {
		return badRequest("missing field `action_type`")
	}
	switch *a.ActionType {
	case "InstanceStart":
		if s.started {
			return badRequest(notAfterStart)
		}
		if s.boot == nil {
			return badRequest("Cannot start microvm without kernel configuration.")
		}
		if s.machine == nil {
			return badRequest("fctest: machine-config was never set; the VM would get Firecracker's default shape")
		}
		s.started = true
		close(s.resumed)
		args := ""
		if s.boot.BootArgs != nil {
			args = *s.boot.BootArgs
		}
		fmt.Fprintf(s.opts.Console, "[    0.000000] Linux version 6.1.0-fctest (fake guest)\n[    0.000000] Command line: %s\n", args)
		fmt.Fprintf(s.opts.Console, "fctest: guest agent listening on %s\n", channelOf(args))
	case "SendCtrlAltDel":
		if !s.started {
			return badRequest("The requested operation is not supported before starting the microVM.")
		}
		// The guest was booted with reboot=k: it reboots, and Firecracker
		// exits when the guest does.
		fmt.Fprintf(s.opts.Console, "reboot: Restarting system\n")
		s.end(0)
	case "FlushMetrics":
		return badRequest("The metrics system is not initialized.")
	default:
		return badRequest("unknown variant `%s`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`", *a.ActionType)
	}
	return nil
}

func (s *Server) patchVM(body io.Reader) error {
	var v vmState
	if err := decode(body, &v); err != nil {
		return err
	}
	if v.State == nil {
		return badRequest("missing field `state`")
	}
	if !s.started {
		return badRequest("The requested operation is not supported before starting the microVM.")
	}
	switch *v.State {
	case "Paused":
		if !s.paused {
			s.paused = true
			s.resumed = make(chan struct{})
		}
	case "Resumed":
		if s.paused {
			s.paused = false
			close(s.resumed)
		}
	default:
		return badRequest("unknown variant `%s`, expected `Paused` or `Resumed`", *v.State)
	}
	return nil
}

func (s *Server) createSnapshot(body io.Reader) error {
	var sc snapshotCreate
	if err := decode(body, &sc); err != nil {
		return err
	}
	if sc.SnapshotPath == nil || sc.MemFilePath == nil {
		return badRequest("missing field: snapshot_path and mem_file_path are required")
	}
	if sc.SnapshotType != nil && *sc.SnapshotType != "Full" {
		if *sc.SnapshotType != "Diff" {
			return badRequest("unknown variant `%s`, expected `Full` or `Diff`", *sc.SnapshotType)
		}
		if s.machine == nil || s.machine.TrackDirtyPages == nil || !*s.machine.TrackDirtyPages {
			return badRequest("Diff snapshots are not enabled: dirty page tracking is off.")
		}
	}
	if !s.started {
		return badRequest("The requested operation is not supported before starting the microVM.")
	}
	if !s.paused {
		return badRequest("Cannot create snapshot: the microVM is not paused.")
	}
	st := savedState{Magic: stateMagic, Version: s.opts.Version, Machine: *s.machine, Boot: *s.boot, Drives: s.drives, Vsock: s.vsock}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.WriteFile(s.path(*sc.SnapshotPath), b, 0o600); err != nil {
		return badRequest("Cannot create snapshot: cannot write microVM state: %v", err)
	}
	mem, err := os.OpenFile(s.path(*sc.MemFilePath), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return badRequest("Cannot create snapshot: cannot write memory file: %v", err)
	}
	defer mem.Close()
	if err := mem.Truncate(*s.machine.MemSizeMib << 20); err != nil { // sparse, like an idle guest's
		return badRequest("Cannot create snapshot: %v", err)
	}
	if _, err := mem.WriteAt([]byte(stateMagic+" memory\n"), 0); err != nil {
		return badRequest("Cannot create snapshot: %v", err)
	}
	// Firecracker resets the guest's vsock connections on snapshot: the
	// host ends of them do not survive into a restored VM either.
	for c := range s.conns {
		c.Close()
	}
	return nil
}

func (s *Server) loadSnapshot(body io.Reader) error {
	var sl snapshotLoad
	if err := decode(body, &sl); err != nil {
		return err
	}
	if s.started || s.machine != nil || s.boot != nil || len(s.drives) > 0 || s.vsock != nil || s.serial {
		return badRequest("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
	}
	if sl.SnapshotPath == nil {
		return badRequest("missing field `snapshot_path`")
	}
	var mem string
	switch {
	case sl.MemFilePath != nil && sl.MemBackend != nil:
		return badRequest("too many fields: either `mem_backend` or `mem_file_path` exclusively is required.")
	case sl.MemFilePath != nil:
		mem = *sl.MemFilePath
	case sl.MemBackend != nil:
		if sl.MemBackend.BackendType == nil || sl.MemBackend.BackendPath == nil {
			return badRequest("missing field: backend_type and backend_path are required")
		}
		switch *sl.MemBackend.BackendType {
		case "File":
		case "Uffd":
			return badRequest("fctest: the Uffd memory backend is not faked")
		default:
			return badRequest("unknown variant `%s`, expected `File` or `Uffd`", *sl.MemBackend.BackendType)
		}
		mem = *sl.MemBackend.BackendPath
	default:
		return badRequest("missing field: either `mem_backend` or `mem_file_path` is required.")
	}
	b, err := os.ReadFile(s.path(*sl.SnapshotPath))
	if err != nil {
		return badRequest("Load snapshot error: cannot open snapshot file: %v", err)
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil || st.Magic != stateMagic {
		return badRequest("Load snapshot error: invalid snapshot file")
	}
	if st.Version != s.opts.Version {
		return badRequest("Load snapshot error: snapshot version %s does not match %s", st.Version, s.opts.Version)
	}
	fi, err := os.Stat(s.path(mem))
	if err != nil {
		return badRequest("Load snapshot error: cannot open memory file: %v", err)
	}
	if fi.Size() < *st.Machine.MemSizeMib<<20 {
		return badRequest("Load snapshot error: memory file is %d bytes, want %d", fi.Size(), *st.Machine.MemSizeMib<<20)
	}
	for _, d := range st.Drives {
		if err := s.mustExist("Load snapshot error: drive "+*d.DriveID, *d.PathOnHost); err != nil {
			return err
		}
	}
	if st.Vsock != nil {
		uds := *st.Vsock.UdsPath
		if sl.VsockOverride != nil && sl.VsockOverride.UdsPath != nil {
			uds = *sl.VsockOverride.UdsPath
		}
		if err := s.bindVsock(uds); err != nil {
			return badRequest("Load snapshot error: %v", err)
		}
		v := *st.Vsock
		v.UdsPath = &uds
		s.vsock = &v
	}
	s.machine, s.boot, s.drives = &st.Machine, &st.Boot, st.Drives
	s.started = true
	s.paused = sl.ResumeVM == nil || !*sl.ResumeVM
	if !s.paused {
		close(s.resumed)
	}
	fmt.Fprintf(s.opts.Console, "fctest: restored from snapshot (%s)\n", s.stateName())
	return nil
}

// channelOf returns the agent channel named on a kernel command line.
func channelOf(cmdline string) string {
	ch := ""
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, agentproto.ArgChannel+"="); ok {
			ch = v // the last one wins, as in the agent
		}
	}
	return ch
}

func (s *Server) agentPort() (uint32, bool) {
	if s.boot == nil || s.boot.BootArgs == nil {
		return 0, false
	}
	v, ok := strings.CutPrefix(channelOf(*s.boot.BootArgs), "vsock:")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 32)
	return uint32(n), err == nil
}

// bindVsock listens on the vsock device's unix socket, as Firecracker
// does when the device is created: a path in use is an error.
func (s *Server) bindVsock(uds string) error {
	if s.vsockLn != nil {
		s.vsockLn.Close()
		s.vsockLn = nil
	}
	ln, err := net.Listen("unix", s.path(uds))
	if err != nil {
		return badRequest("Cannot create backend for vsock device: %v", err)
	}
	// Firecracker never unlinks its sockets; a stale one makes the next
	// bind fail, and the fake must not hide that.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	s.vsockLn = ln
	s.wg.Add(1)
	go s.acceptVsock(ln)
	return nil
}

func (s *Server) acceptVsock(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.serveVsockConn(c)
		}()
	}
}

// serveVsockConn plays Firecracker's host-initiated connection protocol:
// "CONNECT <port>\n" answered by "OK <host port>\n" when the guest listens
// on port, else the connection is closed.
func (s *Server) serveVsockConn(c net.Conn) {
	br := bufio.NewReader(io.LimitReader(c, 64))
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	ps, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "CONNECT ")
	if !ok {
		return
	}
	port, err := strconv.ParseUint(ps, 10, 32)
	if err != nil {
		return
	}
	// The guest answers only while its vCPUs run.
	for {
		s.mu.Lock()
		resumed, paused := s.resumed, !s.started || s.paused
		want, listening := s.agentPort()
		s.mu.Unlock()
		if !paused {
			if !listening || uint32(port) != want {
				return
			}
			break
		}
		select {
		case <-resumed:
		case <-s.ctx.Done():
			return
		}
	}
	if _, err := fmt.Fprintf(c, "OK %d\n", 1<<30+port); err != nil {
		return
	}
	if br.Buffered() > 0 {
		return // the host spoke before the handshake finished
	}
	_ = agent.NewServer(s.opts.Agent, nil).Serve(s.ctx, c)
}

// Environment variables read by Main.
const (
	// MainEnv, set to "1", tells a test binary's TestMain to run Main.
	MainEnv = "FCTEST_FAKE_FIRECRACKER"
	// RootEnv is Options.Root for Main (a fake jailer sets it).
	RootEnv = "FCTEST_ROOT"
)

// Flags only the fake understands, for tests of the driver's handling of
// a misbehaving VMM. They reach the fake through the driver's ExtraArgs.
const (
	// FlagCrash makes the fake print an error and exit 1 before it
	// creates its API socket.
	FlagCrash = "--fctest-crash"
	// FlagIgnoreTerm makes the fake ignore SIGTERM, so only SIGKILL ends it.
	FlagIgnoreTerm = "--fctest-ignore-term"
)

// Main runs a fake firecracker process with the given arguments (without
// the program name) and returns its exit code. It understands
// --api-sock, --id, --version and ignores the other real flags.
func Main(args []string) int {
	var (
		sock       = "/run/firecracker.socket"
		id         string
		ignoreTerm bool
	)
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(a, "=")
		next := func() string {
			if hasVal {
				return val
			}
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch name {
		case "--version", "-V":
			fmt.Printf("Firecracker v%s\n\nSupported snapshot data format versions: v1.0.0\n", DefaultVersion)
			return 0
		case "--api-sock":
			sock = next()
		case "--id":
			id = next()
		case "--start-time-us", "--start-time-cpu-us", "--parent-cpu-time-us", "--level", "--log-path", "--seccomp-filter":
			next()
		case "--no-seccomp", "--show-level", "--show-log-origin", "--boot-timer", "--no-api":
		case FlagCrash:
			fmt.Fprintln(os.Stderr, "Error creating the vmm: fctest: simulated crash (KVM_CREATE_VM: Permission denied)")
			return 1
		case FlagIgnoreTerm:
			ignoreTerm = true
		default:
			fmt.Fprintf(os.Stderr, "fctest: unknown argument %q\n", a)
			return 153 // Firecracker's exit code for bad arguments
		}
	}
	return runMain(sock, id, os.Getenv(RootEnv), ignoreTerm)
}

func runMain(sock, id, root string, ignoreTerm bool) int {
	srv := New(Options{ID: id, Root: root, Console: os.Stdout, Agent: agent.Config{UID: -1, GID: -1}})
	if root != "" && filepath.IsAbs(sock) {
		sock = filepath.Join(root, sock)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to open the API socket at %s: %v\n", sock, err)
		return 1
	}
	// Like Firecracker, leave the sockets behind on exit: whoever started
	// the process cleans up.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	sigs := waitSignals(ignoreTerm)
	code := 0
	select {
	case code = <-srv.Exited():
		// Let the request that ended the VMM get its answer first.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = hs.Shutdown(ctx)
		cancel()
	case <-sigs:
		fmt.Fprintln(os.Stderr, "fctest: terminated by signal")
	}
	hs.Close()
	srv.Close()
	return code
}

func waitSignals(ignoreTerm bool) <-chan os.Signal {
	ch := make(chan os.Signal, 1)
	if ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
		signal.Notify(ch, syscall.SIGINT)
	} else {
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	}
	return ch
}

// ReadState reports what a vmstate file written by the fake recorded: the
// drive paths and the vsock socket path, for tests of path translation.
func ReadState(path string) (drives []string, uds string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	var st savedState
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&st); err != nil || st.Magic != stateMagic {
		return nil, "", fmt.Errorf("read state %s: not a fctest vmstate file", path)
	}
	for _, d := range st.Drives {
		drives = append(drives, *d.PathOnHost)
	}
	if st.Vsock != nil {
		uds = *st.Vsock.UdsPath
	}
	return drives, uds, nil
}

// JailerMain runs a fake jailer with the given arguments (without the
// program name) and returns its exit code. It checks the argument list as
// the real jailer does, builds <chroot-base>/<exec name>/<id>/root, and
// runs the exec file there with --id and the arguments after "--". It does
// not chroot or change user (tests need not be root); instead the fake
// Firecracker resolves absolute paths under the jail (RootEnv) and starts
// in it. With --new-pid-ns it starts Firecracker as a separate process,
// writes its pid to <root>/<exec name>.pid and exits, as the real one does.
func JailerMain(args []string) int {
	var (
		id, execFile, uid, gid, base, cgv string
		newPIDNS                          bool
		rest                              []string
	)
	base = "/srv/jailer"
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = args[i+1:]
			break
		}
		next := func() string {
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch a {
		case "--id":
			id = next()
		case "--exec-file":
			execFile = next()
		case "--uid":
			uid = next()
		case "--gid":
			gid = next()
		case "--chroot-base-dir":
			base = next()
		case "--cgroup-version":
			cgv = next()
		case "--cgroup", "--parent-cgroup", "--netns", "--resource-limit":
			if v := next(); v == "" {
				fmt.Fprintf(os.Stderr, "jailer: %s needs a value\n", a)
				return 1
			}
		case "--new-pid-ns":
			newPIDNS = true
		case "--daemonize":
		default:
			fmt.Fprintf(os.Stderr, "jailer: unknown argument %q\n", a)
			return 1
		}
	}
	switch {
	case !regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`).MatchString(id):
		fmt.Fprintf(os.Stderr, "jailer: invalid id %q\n", id)
		return 1
	case !filepath.IsAbs(execFile) || !strings.Contains(filepath.Base(execFile), "firecracker"):
		fmt.Fprintf(os.Stderr, "jailer: exec file %q must be an absolute path whose name contains \"firecracker\"\n", execFile)
		return 1
	case uid == "" || gid == "":
		fmt.Fprintln(os.Stderr, "jailer: --uid and --gid are required")
		return 1
	case cgv != "" && cgv != "1" && cgv != "2":
		fmt.Fprintf(os.Stderr, "jailer: invalid cgroup version %q\n", cgv)
		return 1
	}
	root := filepath.Join(base, filepath.Base(execFile), id, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "jailer: %v\n", err)
		return 1
	}
	cmd := exec.Command(execFile, append([]string{"--id", id}, rest...)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), RootEnv+"="+root)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if !newPIDNS {
		// The real jailer execs in place; running a child and passing on
		// signals is the closest a non-root fake gets.
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(os.Stderr, "jailer: %v\n", err)
			return 1
		}
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		go func() {
			for s := range sigs {
				_ = cmd.Process.Signal(s)
			}
		}()
		if err := cmd.Wait(); err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() > 0 {
				return ee.ExitCode()
			}
			return 1
		}
		return 0
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "jailer: %v\n", err)
		return 1
	}
	pidFile := filepath.Join(root, filepath.Base(execFile)+".pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "jailer: %v\n", err)
		return 1
	}
	return 0
}
