package agent

import (
	"encoding/binary"
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"golang.org/x/sys/unix"
)

// watchMask is what a watch reports.
const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MODIFY | unix.IN_CLOSE_WRITE |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF |
	unix.IN_ONLYDIR | unix.IN_EXCL_UNLINK // (followed: the path is /proc/self/fd/N)

// watcher follows one directory (and its subdirectories, if recursive)
// with inotify and streams what changes to one request.
type watcher struct {
	srv       *Server
	req       *agentproto.FileRequest
	fd        int
	f         *os.File       // fd, for the poller: Close unblocks Read
	dirs      map[int]string // watch descriptor -> directory relative to the top
	u         cred
	recursive bool
}

// watch runs until the request is cancelled, the channel ends, or the
// watched directory goes away. It acknowledges once watching.
func (srv *Server) watch(s *session, r *request, req *agentproto.FileRequest) error {
	u, err := srv.cfg.user(req.User)
	if err != nil {
		return err
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	w := &watcher{srv: srv, req: req, fd: fd, f: os.NewFile(uintptr(fd), "inotify"), dirs: map[int]string{}, u: u, recursive: req.Recursive}
	defer w.f.Close()
	if err := w.add(""); err != nil {
		return err
	}
	if err := s.send(agentproto.MsgAck, agentproto.Ack{ID: req.ID}); err != nil {
		return nil
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-r.ctx.Done():
			w.f.Close()
		case <-stop:
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if r.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("watch %s: %w", req.Path, err)
		}
		evs, overflow, gone := w.parse(buf[:n])
		for len(evs) > 0 || overflow {
			k := min(len(evs), agentproto.MaxWatchBatch)
			if err := s.send(agentproto.MsgWatchEvents, agentproto.WatchEvents{ID: req.ID, Events: evs[:k], Overflow: overflow}); err != nil {
				return nil
			}
			evs, overflow = evs[k:], false
		}
		if gone {
			return fmt.Errorf("watch %s: the directory is gone: %w", req.Path, os.ErrNotExist)
		}
	}
}

// add watches directory rel (relative to the top; "" is the top), and,
// for a recursive watch, the directories below it. The path is resolved
// like every file call, as the request's user; inotify then watches the
// inode that resolution found.
func (w *watcher) add(rel string) error {
	p := path.Join(w.req.Path, rel)
	var subdirs []string
	err := w.srv.fileCall(w.req, func(v *fsView) error {
		dfd, err := v.open(p, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer unix.Close(dfd)
		if len(w.dirs) >= agentproto.MaxWatchedDirs {
			return fmt.Errorf("watch %s: more than %d directories: %w", w.req.Path, agentproto.MaxWatchedDirs, errTooLarge)
		}
		wd, err := unix.InotifyAddWatch(w.fd, fmt.Sprintf("/proc/self/fd/%d", dfd), watchMask)
		if err != nil {
			return &os.PathError{Op: "watch", Path: p, Err: err}
		}
		w.dirs[wd] = rel
		if !w.recursive {
			return nil
		}
		d, err := unix.Dup(dfd)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(d), p)
		defer f.Close()
		ents, _ := f.ReadDir(agentproto.MaxWatchedDirs)
		for _, e := range ents {
			if e.IsDir() { // a symlink is not entered
				subdirs = append(subdirs, path.Join(rel, e.Name()))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, sd := range subdirs {
		if err := w.add(sd); err != nil && len(w.dirs) >= agentproto.MaxWatchedDirs {
			return err
		} // a subdirectory that vanished or is unreadable is skipped
	}
	return nil
}

// parse decodes inotify events. gone says the top directory went away.
func (w *watcher) parse(b []byte) (evs []agentproto.WatchEvent, overflow, gone bool) {
	for len(b) >= unix.SizeofInotifyEvent {
		wd := int(int32(binary.NativeEndian.Uint32(b[0:])))
		mask := binary.NativeEndian.Uint32(b[4:])
		nameLen := int(binary.NativeEndian.Uint32(b[12:]))
		if unix.SizeofInotifyEvent+nameLen > len(b) {
			break
		}
		name := strings.TrimRight(string(b[unix.SizeofInotifyEvent:unix.SizeofInotifyEvent+nameLen]), "\x00")
		b = b[unix.SizeofInotifyEvent+nameLen:]
		if mask&unix.IN_Q_OVERFLOW != 0 {
			overflow = true
			continue
		}
		dir, known := w.dirs[wd]
		if !known {
			continue
		}
		if mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0 {
			delete(w.dirs, wd)
			if dir == "" {
				gone = true
			}
			continue
		}
		rel := path.Join(dir, name)
		var op agentproto.WatchOp
		switch {
		case mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
			op = agentproto.OpCreate
			if w.recursive && mask&unix.IN_ISDIR != 0 {
				_ = w.add(rel)
			}
		case mask&unix.IN_DELETE != 0:
			op = agentproto.OpRemove
		case mask&unix.IN_MOVED_FROM != 0:
			op = agentproto.OpRename
		case mask&(unix.IN_MODIFY|unix.IN_CLOSE_WRITE) != 0:
			op = agentproto.OpWrite
		case mask&unix.IN_ATTRIB != 0:
			op = agentproto.OpChmod
		default:
			continue
		}
		if n := len(evs); n > 0 && evs[n-1].Name == rel && evs[n-1].Op == op {
			continue // a burst of writes to one file: one event
		}
		evs = append(evs, agentproto.WatchEvent{Name: rel, Op: op})
	}
	return evs, overflow, gone
}
