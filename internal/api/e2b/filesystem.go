package e2b

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"regexp"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/api/e2b/envdpb/filesystem"
	"github.com/firesandbox/firesandbox/internal/api/e2b/envdpb/filesystem/filesystemconnect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// filesystemService is envd's filesystem.Filesystem over the agent's file
// calls, each with the permissions of the user the call names.
type filesystemService struct {
	filesystemconnect.UnimplementedFilesystemHandler
	h *Handler

	mu       sync.Mutex
	watchers map[string]*watcher // CreateWatcher's, by id
}

// fileCall resolves a call's path and user and gets the agent.
func (f *filesystemService) fileCall(ctx context.Context, hdr http.Header, p string) (*agentproto.Client, string, []agentproto.FileOption, error) {
	h := f.h
	sb, a, err := h.agentFor(ctx)
	if err != nil {
		return nil, "", nil, err
	}
	abs, err := guestPath(sb, p)
	if err != nil {
		return nil, "", nil, h.rpcError(err)
	}
	user, err := callUser(hdr)
	if err != nil {
		return nil, "", nil, h.rpcError(err)
	}
	var opts []agentproto.FileOption
	if user != "" {
		opts = append(opts, agentproto.AsUser(user))
	}
	return a, abs, opts, nil
}

func entryOf(fi agentproto.FileInfo) *filesystem.EntryInfo {
	e := &filesystem.EntryInfo{Name: fi.Name, Path: fi.Path, Size: fi.Size, Mode: fi.Mode,
		Permissions: permissions(fi), Owner: fi.Owner, Group: fi.Group,
		ModifiedTime: timestamppb.New(time.Unix(0, fi.ModUnixNanos))}
	switch fi.Type {
	case agentproto.TypeFile:
		e.Type = filesystem.FileType_FILE_TYPE_FILE
	case agentproto.TypeDir:
		e.Type = filesystem.FileType_FILE_TYPE_DIRECTORY
	case agentproto.TypeSymlink:
		e.Type = filesystem.FileType_FILE_TYPE_SYMLINK
		t := fi.Target
		e.SymlinkTarget = &t
	}
	if e.Name == "" {
		e.Name = path.Base(fi.Path)
	}
	return e
}

// permissions is ls's rendering of an entry's type and mode.
func permissions(fi agentproto.FileInfo) string {
	m := fs.FileMode(fi.Mode & 0o777)
	switch fi.Type {
	case agentproto.TypeDir:
		m |= fs.ModeDir
	case agentproto.TypeSymlink:
		m |= fs.ModeSymlink
	}
	if fi.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if fi.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if fi.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m.String()
}

func (f *filesystemService) Stat(ctx context.Context, req *connect.Request[filesystem.StatRequest]) (*connect.Response[filesystem.StatResponse], error) {
	a, p, opts, err := f.fileCall(ctx, req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	fi, err := a.Stat(ctx, p, opts...)
	if err != nil {
		return nil, f.h.rpcError(err)
	}
	return connect.NewResponse(&filesystem.StatResponse{Entry: entryOf(fi)}), nil
}

func (f *filesystemService) ListDir(ctx context.Context, req *connect.Request[filesystem.ListDirRequest]) (*connect.Response[filesystem.ListDirResponse], error) {
	a, p, opts, err := f.fileCall(ctx, req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	depth := int(req.Msg.GetDepth())
	if depth == 0 {
		depth = 1
	}
	if depth > agentproto.MaxListDepth {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("depth %d: at most %d", depth, agentproto.MaxListDepth))
	}
	list, err := a.ListDir(ctx, p, depth, opts...)
	if err != nil {
		return nil, f.h.rpcError(err)
	}
	out := &filesystem.ListDirResponse{Entries: make([]*filesystem.EntryInfo, 0, len(list))}
	for _, fi := range list {
		out.Entries = append(out.Entries, entryOf(fi))
	}
	return connect.NewResponse(out), nil
}

// MakeDir creates the directory and its missing parents; an existing one
// is AlreadyExists (the SDK's makeDir answers false).
func (f *filesystemService) MakeDir(ctx context.Context, req *connect.Request[filesystem.MakeDirRequest]) (*connect.Response[filesystem.MakeDirResponse], error) {
	a, p, opts, err := f.fileCall(ctx, req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	fi, err := a.MakeDir(ctx, p, false, opts...)
	if errors.Is(err, fs.ErrNotExist) { // a parent is missing
		fi, err = a.MakeDir(ctx, p, true, opts...)
	}
	if err != nil {
		return nil, f.h.rpcError(err)
	}
	return connect.NewResponse(&filesystem.MakeDirResponse{Entry: entryOf(fi)}), nil
}

func (f *filesystemService) Move(ctx context.Context, req *connect.Request[filesystem.MoveRequest]) (*connect.Response[filesystem.MoveResponse], error) {
	a, from, opts, err := f.fileCall(ctx, req.Header(), req.Msg.GetSource())
	if err != nil {
		return nil, err
	}
	to, err := guestPath(targetOf(ctx).sb, req.Msg.GetDestination())
	if err != nil {
		return nil, f.h.rpcError(err)
	}
	fi, err := a.Move(ctx, from, to, opts...)
	if err != nil {
		return nil, f.h.rpcError(err)
	}
	return connect.NewResponse(&filesystem.MoveResponse{Entry: entryOf(fi)}), nil
}

// Remove removes a file, or a directory with everything in it.
func (f *filesystemService) Remove(ctx context.Context, req *connect.Request[filesystem.RemoveRequest]) (*connect.Response[filesystem.RemoveResponse], error) {
	a, p, opts, err := f.fileCall(ctx, req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	if err := a.Remove(ctx, p, true, opts...); err != nil {
		return nil, f.h.rpcError(err)
	}
	return connect.NewResponse(&filesystem.RemoveResponse{}), nil
}

func eventOf(ev agentproto.WatchEvent) *filesystem.FilesystemEvent {
	t := filesystem.EventType_EVENT_TYPE_UNSPECIFIED
	switch ev.Op {
	case agentproto.OpCreate:
		t = filesystem.EventType_EVENT_TYPE_CREATE
	case agentproto.OpWrite:
		t = filesystem.EventType_EVENT_TYPE_WRITE
	case agentproto.OpRemove:
		t = filesystem.EventType_EVENT_TYPE_REMOVE
	case agentproto.OpRename:
		t = filesystem.EventType_EVENT_TYPE_RENAME
	case agentproto.OpChmod:
		t = filesystem.EventType_EVENT_TYPE_CHMOD
	}
	return &filesystem.FilesystemEvent{Name: ev.Name, Type: t}
}

// WatchDir streams a directory's events: an empty start first, then the
// events, with keepalives while none come.
func (f *filesystemService) WatchDir(ctx context.Context, req *connect.Request[filesystem.WatchDirRequest], st *connect.ServerStream[filesystem.WatchDirResponse]) error {
	a, p, opts, err := f.fileCall(ctx, req.Header(), req.Msg.GetPath())
	if err != nil {
		return err
	}
	events := make(chan []agentproto.WatchEvent, 64)
	overflow := make(chan struct{}, 1)
	w, err := a.Watch(ctx, p, req.Msg.GetRecursive(), func(b agentproto.WatchEvents) {
		select { // the client's read loop must not block: a full queue drops
		case events <- b.Events:
		default:
			select {
			case overflow <- struct{}{}:
			default:
			}
		}
	}, opts...)
	if err != nil {
		return f.h.rpcError(err)
	}
	defer w.Close()
	if err := st.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Start{Start: &filesystem.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	tick := time.NewTicker(keepaliveInterval(req.Header()))
	defer tick.Stop()
	for {
		select {
		case evs := <-events:
			for _, ev := range evs {
				if uploadTemp.MatchString(path.Base(ev.Name)) {
					continue
				}
				if err := st.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: eventOf(ev)}}); err != nil {
					return err
				}
			}
		case <-overflow:
			return connect.NewError(connect.CodeResourceExhausted, errors.New("the watch fell behind and dropped events: watch again"))
		case <-tick.C:
			if err := st.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Keepalive{Keepalive: &filesystem.WatchDirResponse_KeepAlive{}}}); err != nil {
				return err
			}
		case <-w.Done():
			if ctx.Err() != nil {
				return f.h.rpcError(ctx.Err())
			}
			return f.h.rpcError(w.Err())
		case <-ctx.Done():
			return f.h.rpcError(ctx.Err())
		}
	}
}

// uploadTemp matches the temporary file the agent writes an upload to
// before renaming it into place: E2B's watchers never see such a file.
var uploadTemp = regexp.MustCompile(`^\..+\.upload-[0-9a-f]+$`)

// watcher is a CreateWatcher watch whose events wait for
// GetWatcherEvents.
type watcher struct {
	sandbox string
	w       *agentproto.Watch
	mu      sync.Mutex
	events  []*filesystem.FilesystemEvent
	lost    bool
}

// maxWatcherEvents bounds what one polled watcher keeps between polls.
const maxWatcherEvents = 10_000

func (f *filesystemService) CreateWatcher(ctx context.Context, req *connect.Request[filesystem.CreateWatcherRequest]) (*connect.Response[filesystem.CreateWatcherResponse], error) {
	a, p, opts, err := f.fileCall(ctx, req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	wt := &watcher{sandbox: targetOf(ctx).sb.ID}
	// The watch outlives this call: it ends with RemoveWatcher or the VM.
	w, err := a.Watch(context.WithoutCancel(ctx), p, req.Msg.GetRecursive(), func(b agentproto.WatchEvents) {
		wt.mu.Lock()
		defer wt.mu.Unlock()
		for _, ev := range b.Events {
			if uploadTemp.MatchString(path.Base(ev.Name)) {
				continue
			}
			if len(wt.events) >= maxWatcherEvents {
				wt.lost = true
				return
			}
			wt.events = append(wt.events, eventOf(ev))
		}
	}, opts...)
	if err != nil {
		return nil, f.h.rpcError(err)
	}
	wt.w = w
	id := f.h.tok.make("watcher", wt.sandbox, fmt.Sprint(time.Now().UnixNano()))[:24]
	f.mu.Lock()
	if f.watchers == nil {
		f.watchers = map[string]*watcher{}
	}
	if len(f.watchers) >= 4*agentproto.MaxWatches {
		f.mu.Unlock()
		w.Close()
		return nil, connect.NewError(connect.CodeResourceExhausted, errors.New("too many watchers"))
	}
	f.watchers[id] = wt
	f.mu.Unlock()
	go func() { // a watch that ends by itself (the VM went) is forgotten
		<-w.Done()
		f.mu.Lock()
		delete(f.watchers, id)
		f.mu.Unlock()
	}()
	return connect.NewResponse(&filesystem.CreateWatcherResponse{WatcherId: id}), nil
}

func (f *filesystemService) watcherOf(ctx context.Context, id string) (*watcher, error) {
	f.mu.Lock()
	wt := f.watchers[id]
	f.mu.Unlock()
	if wt == nil || wt.sandbox != targetOf(ctx).sb.ID {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no watcher %q", id))
	}
	return wt, nil
}

func (f *filesystemService) GetWatcherEvents(ctx context.Context, req *connect.Request[filesystem.GetWatcherEventsRequest]) (*connect.Response[filesystem.GetWatcherEventsResponse], error) {
	wt, err := f.watcherOf(ctx, req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	wt.mu.Lock()
	evs, lost := wt.events, wt.lost
	wt.events, wt.lost = nil, false
	wt.mu.Unlock()
	if lost {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("more than %d events between polls: some were dropped", maxWatcherEvents))
	}
	return connect.NewResponse(&filesystem.GetWatcherEventsResponse{Events: evs}), nil
}

func (f *filesystemService) RemoveWatcher(ctx context.Context, req *connect.Request[filesystem.RemoveWatcherRequest]) (*connect.Response[filesystem.RemoveWatcherResponse], error) {
	wt, err := f.watcherOf(ctx, req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	wt.w.Close()
	f.mu.Lock()
	delete(f.watchers, req.Msg.GetWatcherId())
	f.mu.Unlock()
	return connect.NewResponse(&filesystem.RemoveWatcherResponse{}), nil
}
