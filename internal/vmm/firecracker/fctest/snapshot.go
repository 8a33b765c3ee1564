package fctest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
)

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
	st := savedState{Magic: stateMagic, Version: s.opts.Version, Machine: *s.machine, Boot: *s.boot, Drives: s.drives, Vsock: s.vsock, Net: s.nets}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	sp, err := s.path(*sc.SnapshotPath)
	if err != nil {
		return badRequest("Cannot create snapshot: %v", err)
	}
	mp, err := s.path(*sc.MemFilePath)
	if err != nil {
		return badRequest("Cannot create snapshot: %v", err)
	}
	if err := os.WriteFile(sp, b, 0o600); err != nil {
		return badRequest("Cannot create snapshot: cannot write microVM state: %v", err)
	}
	mem, err := os.OpenFile(mp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
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
	if s.started || s.machine != nil || s.boot != nil || len(s.drives) > 0 || len(s.nets) > 0 || s.vsock != nil || s.serial {
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
	sp, err := s.path(*sl.SnapshotPath)
	if err != nil {
		return badRequest("Load snapshot error: cannot open snapshot file: %v", err)
	}
	b, err := os.ReadFile(sp)
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
	mp, err := s.path(mem)
	if err != nil {
		return badRequest("Load snapshot error: cannot open memory file: %v", err)
	}
	// Firecracker maps the memory file privately after opening it
	// read-only: it must be readable by the (jailed) VMM's user.
	mf, err := os.Open(mp)
	if err != nil {
		return badRequest("Load snapshot error: cannot open memory file: %v", err)
	}
	fi, err := mf.Stat()
	mf.Close()
	if err != nil {
		return badRequest("Load snapshot error: cannot open memory file: %v", err)
	}
	if fi.Size() < *st.Machine.MemSizeMib<<20 {
		return badRequest("Load snapshot error: memory file is %d bytes, want %d", fi.Size(), *st.Machine.MemSizeMib<<20)
	}
	for _, d := range st.Drives {
		if err := s.mustOpen("Load snapshot error: drive "+*d.DriveID, *d.PathOnHost, driveFlag(d)); err != nil {
			return err
		}
	}
	if len(sl.NetworkOverrides) > 0 && string(sl.NetworkOverrides) != "null" {
		return badRequest("fctest: network_overrides are not faked (every VM's tap has the snapshot's name)")
	}
	if err := s.openTaps(st.Net); err != nil {
		return err
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
