package fctest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/firesandbox/firesandbox/internal/agent"
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
	// Jailed says the process runs as a jailed Firecracker does: its
	// working directory is its chroot. Every path a request names then
	// resolves inside it, absolute ones included, and one that leads out
	// (through "..", or a symlink whose target is outside or absolute, which
	// would dangle in a real chroot) is refused.
	Jailed bool
	// Console receives the guest's serial output (Firecracker's stdout).
	Console io.Writer
	// Flood is how many bytes the guest writes to its console once it
	// starts, ending with "fctest: flood done" (a guest flooding its
	// serial port).
	Flood int
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
	nets     []NetworkInterface
	taps     []*os.File // nets' taps, held open as Firecracker holds them
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
	for _, t := range s.taps {
		t.Close()
	}
	s.taps = nil
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) end(code int) {
	s.exitOnce.Do(func() { s.exit <- code })
}

// path resolves a path named in a request: as given, or, jailed, as a
// path relative to the working directory (the chroot) after checking it
// stays inside. The file need not exist; its directory must.
func (s *Server) path(p string) (string, error) {
	if !s.opts.Jailed {
		return p, nil
	}
	rel := strings.TrimPrefix(filepath.Clean("/"+p), "/")
	if rel == "" {
		rel = "."
	}
	root, err := os.OpenRoot(".")
	if err != nil {
		return "", fmt.Errorf("open the jail root: %w", err)
	}
	defer root.Close()
	if _, err := root.Stat(rel); err == nil {
		return rel, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%v (outside the jail?)", err)
	}
	if _, err := root.Stat(filepath.Dir(rel)); err != nil {
		return "", err
	}
	if fi, err := root.Lstat(rel); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		return "", errors.New("a symlink that leads nowhere inside the jail")
	}
	return rel, nil
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
	case strings.HasPrefix(route, "PUT /network-interfaces/"):
		err = s.putNetworkInterface(strings.TrimPrefix(r.URL.Path, "/network-interfaces/"), r.Body)
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

// mustExist checks that a file a request names can be opened for
// reading (or, with write, for writing) by this process, as Firecracker
// opens it.
func (s *Server) mustExist(what, p string) error { return s.mustOpen(what, p, os.O_RDONLY) }

func (s *Server) mustOpen(what, p string, flag int) error {
	rp, err := s.path(p)
	if err != nil {
		return badRequest("%s: cannot open %s: %v", what, p, err)
	}
	f, err := os.OpenFile(rp, flag, 0)
	if err != nil {
		return badRequest("%s: cannot open %s: %v", what, p, err)
	}
	f.Close()
	return nil
}
