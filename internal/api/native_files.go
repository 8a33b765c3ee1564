// This file holds the native API's file calls in sandboxes beyond upload
// and download: stat, list, mkdir, move, remove and watch. Paths are
// relative to the sandbox's working directory (/home/sandbox) or absolute
// inside it; the guest agent resolves them there, so no symlink planted
// by code in the sandbox leads out, and calls run as the sandbox's user.

package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

func queryBool(r *http.Request, name string) bool {
	v := r.URL.Query().Get(name)
	return v == "1" || v == "true"
}

// GET .../files/stat?path=P
func (s *Server) handleStat(w http.ResponseWriter, r *http.Request) {
	fi, err := s.sbx.Stat(r.Context(), tenantOf(r), r.PathValue("id"), r.URL.Query().Get("path"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, fi)
}

// GET .../files/list?path=P&depth=N (depth 1, its own entries, by default)
func (s *Server) handleListDir(w http.ResponseWriter, r *http.Request) {
	depth := 1
	if d := r.URL.Query().Get("depth"); d != "" {
		var err error
		if depth, err = strconv.Atoi(d); err != nil {
			s.writeError(w, r, fmt.Errorf("%w: depth %q", sandbox.ErrBadRequest, d))
			return
		}
	}
	list, err := s.sbx.ListDir(r.Context(), tenantOf(r), r.PathValue("id"), r.URL.Query().Get("path"), depth)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if list == nil {
		list = []agentproto.FileInfo{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": list})
}

// MkdirIn is POST .../files/mkdir's request.
type MkdirIn struct {
	Path    string `json:"path"`
	Parents bool   `json:"parents,omitempty"`
}

func (s *Server) handleMkdir(w http.ResponseWriter, r *http.Request) {
	var in MkdirIn
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeError(w, r, err)
		return
	}
	fi, err := s.sbx.MakeDir(r.Context(), tenantOf(r), r.PathValue("id"), in.Path, in.Parents)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, fi)
}

// MoveIn is POST .../files/move's request.
type MoveIn struct {
	From string `json:"from"`
	To   string `json:"to"`
}

func (s *Server) handleMove(w http.ResponseWriter, r *http.Request) {
	var in MoveIn
	if err := decodeJSON(r, &in, true); err != nil {
		s.writeError(w, r, err)
		return
	}
	fi, err := s.sbx.Move(r.Context(), tenantOf(r), r.PathValue("id"), in.From, in.To)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, fi)
}

// DELETE .../files?path=P[&recursive=1]
func (s *Server) handleRemove(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	if p == "" {
		s.writeError(w, r, fmt.Errorf("%w: give the file as ?path=", sandbox.ErrBadRequest))
		return
	}
	if err := s.sbx.Remove(r.Context(), tenantOf(r), r.PathValue("id"), p, queryBool(r, "recursive")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// GET .../files/watch?path=P[&recursive=1] streams changes as NDJSON (or
// SSE): {"type":"ready"} once watching, then {"type":"events","result":
// {"events":[{"name":"a.txt","op":"create"}],"overflow":false}} batches,
// until the client leaves or the sandbox is paused, forked or deleted.
func (s *Server) handleWatch(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{}) // a watch lasts as long as its client
	es := newEventStream(w, r, cancel)
	sink := newAsyncSink(func(typ string, b []byte) error {
		var v any
		if len(b) > 0 {
			v = json.RawMessage(b)
		}
		es.send(typ, v)
		return nil
	}, func(error) { cancel() })
	err := s.sbx.Watch(ctx, tenantOf(r), r.PathValue("id"), r.URL.Query().Get("path"), queryBool(r, "recursive"),
		func() { sink.writer("ready").Write(nil) },
		func(ev agentproto.WatchEvents) {
			b, _ := json.Marshal(struct {
				Events   []agentproto.WatchEvent `json:"events"`
				Overflow bool                    `json:"overflow,omitempty"`
			}{ev.Events, ev.Overflow})
			sink.writer("events").Write(b)
		})
	sink.close()
	if err != nil && ctx.Err() == nil {
		es.fail(s, err)
	}
}
