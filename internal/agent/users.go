package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"golang.org/x/sys/unix"
)

// cred is a guest user a request acts as.
type cred struct {
	name     string
	uid, gid int // negative: the agent's own (no switch)
	home     string
}

// maxAccountFile bounds /etc/passwd and /etc/group as the agent reads them.
const maxAccountFile = 1 << 20

// user resolves a request's user: "" is the default sandbox user, "root"
// is uid 0, anything else is looked up in the guest's /etc/passwd.
func (c *Config) user(name string) (cred, error) {
	if err := agentproto.ValidateUser(name); err != nil {
		return cred{}, err
	}
	switch name {
	case "":
		return cred{uid: c.UID, gid: c.GID}, nil
	case "root":
		return cred{name: "root", uid: 0, gid: 0, home: "/root"}, nil
	}
	b, err := c.readAccountFile("/etc/passwd")
	if err != nil {
		return cred{}, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 7 || f[0] != name {
			continue
		}
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil || uid < 0 || gid < 0 {
			break
		}
		return cred{name: name, uid: uid, gid: gid, home: f[5]}, nil
	}
	return cred{}, fmt.Errorf("user %q: %w", name, errNoUser)
}

// readAccountFile reads a small file of the guest's, resolved inside the
// guest root, refusing anything but a regular file.
func (c *Config) readAccountFile(p string) ([]byte, error) {
	f, err := c.openInRoot(p, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", p)
	}
	return io.ReadAll(io.LimitReader(f, maxAccountFile))
}

// openInRoot opens guest path p resolved inside the guest root, without
// blocking on a FIFO or acquiring a terminal.
func (c *Config) openInRoot(p string, flags int) (*os.File, error) {
	top := c.Root
	if top == "" {
		top = "/"
	}
	rfd, err := unix.Open(top, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(rfd)
	fd, err := unix.Openat2(rfd, strings.TrimPrefix(p, "/"), &unix.OpenHow{
		Flags:   uint64(flags | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	return os.NewFile(uintptr(fd), p), nil
}

// idNames maps uids and gids to names from the guest's account files,
// for file listings; unknown ids have no name.
type idNames struct{ users, groups map[int]string }

func (c *Config) idNames() idNames {
	parse := func(p string) map[int]string {
		m := map[int]string{}
		b, err := c.readAccountFile(p)
		if err != nil {
			return m
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Split(line, ":")
			if len(f) >= 3 {
				if id, err := strconv.Atoi(f[2]); err == nil {
					m[id] = f[0]
				}
			}
		}
		return m
	}
	return idNames{users: parse("/etc/passwd"), groups: parse("/etc/group")}
}

// asUser runs fn with u's file-system identity: the kernel checks every
// path fn opens, creates or removes against u's permissions, and what it
// creates belongs to u. Only the thread running fn changes identity
// (setfsuid, setfsgid and setgroups act per thread); fn runs on a thread
// of its own, which is discarded if its identity cannot be restored. fn
// must not start goroutines that touch files.
func asUser(u cred, fn func() error) error {
	if u.uid < 0 || os.Geteuid() != 0 {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		groups, err := unix.Getgroups()
		if err != nil {
			errc <- err
			return // still locked: the runtime ends the thread
		}
		if err := unix.Setgroups([]int{u.gid}); err != nil {
			errc <- fmt.Errorf("setgroups: %w", err)
			return
		}
		_ = unix.Setfsgid(u.gid)
		_ = unix.Setfsuid(u.uid)
		if fsuid, _ := unix.SetfsuidRetUid(-1); fsuid != u.uid {
			errc <- fmt.Errorf("setfsuid %d: still %d", u.uid, fsuid)
			return
		}
		err = fn()
		_ = unix.Setfsuid(0)
		_ = unix.Setfsgid(0)
		fsuid, _ := unix.SetfsuidRetUid(-1)
		if unix.Setgroups(groups) == nil && fsuid == 0 {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}
