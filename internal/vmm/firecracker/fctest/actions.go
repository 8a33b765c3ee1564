package fctest

import (
	"fmt"
	"io"
	"strings"
)

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
		if s.opts.Flood > 0 {
			go flood(s.opts.Console, s.opts.Flood)
		}
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

func flood(w io.Writer, n int) {
	line := []byte(strings.Repeat("flood ", 15) + "\n")
	for i := 0; i < n; i += len(line) {
		if _, err := w.Write(line); err != nil {
			return
		}
	}
	fmt.Fprintln(w, "fctest: flood done")
}
