package agent

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"golang.org/x/sys/unix"
)

// File calls resolve every path with openat2 from a directory fd: the
// guest root with RESOLVE_IN_ROOT (symlinks, absolute ones too, resolve as
// the guest sees them and never above its root), or the request's Within
// directory with RESOLVE_BENEATH (a symlink that leads out of Within is
// refused). The last component of a path is never followed where the
// call acts on the name itself (stat, remove, move, mkdir); downloads
// open it non-blocking and refuse anything but a regular file, so a FIFO
// or a device planted by guest code cannot hold the agent.

// fsView is where one file request's paths resolve.
type fsView struct {
	c       *Config
	base    int    // O_PATH directory fd
	baseDir string // its guest path
	resolve uint64
}

// openRoot opens the guest root for views. The agent opens it with its
// own rights: the directories above the root are not the user's to see.
func (c *Config) openRoot() (int, error) {
	top := c.Root
	if top == "" {
		top = "/"
	}
	return unix.Open(top, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

// view opens the directory a request's paths resolve in, from rfd (the
// guest root, which the view takes over). Call it, and every method of
// the view that resolves a path, as the request's user.
func (c *Config) view(rfd int, within string) (*fsView, error) {
	v := &fsView{c: c, base: rfd, baseDir: "/", resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	if within == "" || within == "/" {
		return v, nil
	}
	fd, err := unix.Openat2(rfd, strings.TrimPrefix(within, "/"), &unix.OpenHow{
		Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: v.resolve,
	})
	unix.Close(rfd)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: within, Err: err}
	}
	v.base, v.baseDir = fd, within
	v.resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS
	return v, nil
}

func (v *fsView) close() { unix.Close(v.base) }

// rel is p relative to the view's base, "" for the base itself.
func (v *fsView) rel(p string) (string, error) {
	if !agentproto.Inside(p, v.baseDir) {
		return "", fmt.Errorf("%s is not in %s: %w", p, v.baseDir, errInvalid)
	}
	if v.baseDir == "/" {
		return strings.TrimPrefix(p, "/"), nil
	}
	return strings.TrimPrefix(strings.TrimPrefix(p, v.baseDir), "/"), nil
}

// open opens p, following a final symlink inside the view.
func (v *fsView) open(p string, flags int) (int, error) {
	rel, err := v.rel(p)
	if err != nil {
		return -1, err
	}
	if rel == "" {
		rel = "."
	}
	flags |= unix.O_CLOEXEC
	if flags&unix.O_PATH == 0 { // openat2 refuses other flags with O_PATH
		flags |= unix.O_NOCTTY | unix.O_NONBLOCK
	}
	fd, err := unix.Openat2(v.base, rel, &unix.OpenHow{Flags: uint64(flags), Resolve: v.resolve})
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: p, Err: err}
	}
	return fd, nil
}

// parent opens p's parent directory and returns it with p's last
// component; p may not be the view's base.
func (v *fsView) parent(p string) (int, string, error) {
	rel, err := v.rel(p)
	if err != nil {
		return -1, "", err
	}
	if rel == "" {
		return -1, "", fmt.Errorf("%s: the top of the view itself: %w", p, errInvalid)
	}
	dir := path.Dir(p)
	fd, err := v.open(dir, unix.O_PATH|unix.O_DIRECTORY)
	return fd, path.Base(rel), err
}

// info describes name in directory dirfd (the directory itself when name
// is ""), without following a final symlink.
func (v *fsView) info(dirfd int, name, guestPath string, ids *idNames) (agentproto.FileInfo, error) {
	var st unix.Stat_t
	var err error
	if name == "" {
		err = unix.Fstat(dirfd, &st)
	} else {
		err = unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return agentproto.FileInfo{}, &os.PathError{Op: "stat", Path: guestPath, Err: err}
	}
	fi := agentproto.FileInfo{
		Name: path.Base(guestPath), Path: guestPath, Size: st.Size, Mode: st.Mode & 0o7777,
		UID: int(st.Uid), GID: int(st.Gid), ModUnixNanos: st.Mtim.Nano(),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		fi.Type = agentproto.TypeFile
	case unix.S_IFDIR:
		fi.Type = agentproto.TypeDir
	case unix.S_IFLNK:
		fi.Type = agentproto.TypeSymlink
		buf := make([]byte, agentproto.MaxPathBytes)
		if n, err := unix.Readlinkat(dirfd, name, buf); err == nil {
			fi.Target = string(buf[:n])
		}
	default:
		fi.Type = agentproto.TypeOther
	}
	if ids != nil {
		fi.Owner, fi.Group = ids.users[fi.UID], ids.groups[fi.GID]
	}
	return fi, nil
}

// stat describes p itself (a symlink, not its target).
func (v *fsView) stat(p string, ids *idNames) (agentproto.FileInfo, error) {
	if rel, err := v.rel(p); err != nil {
		return agentproto.FileInfo{}, err
	} else if rel == "" {
		return v.info(v.base, "", p, ids)
	}
	dfd, name, err := v.parent(p)
	if err != nil {
		return agentproto.FileInfo{}, err
	}
	defer unix.Close(dfd)
	return v.info(dfd, name, p, ids)
}

// list lists directory p, depth levels deep, directories before their
// contents, names sorted; it does not follow symlinks below p.
func (v *fsView) list(p string, depth int, ids *idNames) ([]agentproto.FileInfo, error) {
	fd, err := v.open(p, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, err
	}
	var out []agentproto.FileInfo
	err = v.walk(fd, p, depth, ids, &out)
	return out, err
}

func (v *fsView) walk(fd int, dir string, depth int, ids *idNames, out *[]agentproto.FileInfo) error {
	f := os.NewFile(uintptr(fd), dir)
	defer f.Close()
	var names []string
	for {
		batch, err := f.Readdirnames(256)
		names = append(names, batch...)
		if len(*out)+len(names) > agentproto.MaxListEntries {
			return fmt.Errorf("list %s: more than %d entries: %w", dir, agentproto.MaxListEntries, errTooLarge)
		}
		if err == io.EOF || len(batch) == 0 {
			break
		}
		if err != nil {
			return fmt.Errorf("list %s: %w", dir, err)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		fi, err := v.info(fd, n, path.Join(dir, n), ids)
		if err != nil {
			continue // gone meanwhile
		}
		*out = append(*out, fi)
		if fi.Type != agentproto.TypeDir || depth <= 1 {
			continue
		}
		cfd, err := unix.Openat2(fd, n, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err != nil {
			continue // unreadable for this user: listed, not entered
		}
		if err := v.walk(cfd, fi.Path, depth-1, ids, out); err != nil {
			return err
		}
	}
	return nil
}

// mkdir creates directory p (and, with parents, what is missing above
// it; an existing directory is then fine).
func (v *fsView) mkdir(p string, parents bool) error {
	if parents {
		fd, err := v.mkdirAll(p)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
	dfd, name, err := v.parent(p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Mkdirat(dfd, name, 0o755); err != nil {
		return &os.PathError{Op: "mkdir", Path: p, Err: err}
	}
	return nil
}

// mkdirAll opens directory p, creating it and its missing parents, one
// resolved component at a time, and returns it as an O_PATH fd.
func (v *fsView) mkdirAll(p string) (int, error) {
	if fd, err := v.open(p, unix.O_PATH|unix.O_DIRECTORY); err == nil || !os.IsNotExist(err) {
		return fd, err
	}
	if rel, err := v.rel(p); err != nil || rel == "" {
		return -1, &os.PathError{Op: "mkdir", Path: p, Err: unix.ENOENT}
	}
	dfd, err := v.mkdirAll(path.Dir(p))
	if err != nil {
		return -1, err
	}
	defer unix.Close(dfd)
	if err := unix.Mkdirat(dfd, path.Base(p), 0o755); err != nil && err != unix.EEXIST {
		return -1, &os.PathError{Op: "mkdir", Path: p, Err: err}
	}
	return v.open(p, unix.O_PATH|unix.O_DIRECTORY)
}

// move renames from to to.
func (v *fsView) move(from, to string) error {
	ffd, fname, err := v.parent(from)
	if err != nil {
		return err
	}
	defer unix.Close(ffd)
	tfd, tname, err := v.parent(to)
	if err != nil {
		return err
	}
	defer unix.Close(tfd)
	if err := unix.Renameat(ffd, fname, tfd, tname); err != nil {
		return &os.LinkError{Op: "move", Old: from, New: to, Err: err}
	}
	return nil
}

// remove removes p; with recursive, a directory and all it holds.
func (v *fsView) remove(p string, recursive bool) error {
	dfd, name, err := v.parent(p)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if recursive {
		return removeAllAt(dfd, name, p, 0)
	}
	err = unix.Unlinkat(dfd, name, 0)
	if err == unix.EISDIR {
		err = unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR)
	}
	if err != nil {
		return &os.PathError{Op: "remove", Path: p, Err: err}
	}
	return nil
}

// maxRemoveDepth bounds the recursion of a recursive remove.
const maxRemoveDepth = 512

func removeAllAt(dfd int, name, guestPath string, depth int) error {
	err := unix.Unlinkat(dfd, name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR {
		return &os.PathError{Op: "remove", Path: guestPath, Err: err}
	}
	if depth > maxRemoveDepth {
		return fmt.Errorf("remove %s: deeper than %d: %w", guestPath, maxRemoveDepth, errTooLarge)
	}
	cfd, err := unix.Openat2(dfd, name, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS,
	})
	if err != nil {
		return &os.PathError{Op: "remove", Path: guestPath, Err: err}
	}
	f := os.NewFile(uintptr(cfd), guestPath)
	for {
		names, rerr := f.Readdirnames(256)
		for _, n := range names {
			if err := removeAllAt(cfd, n, path.Join(guestPath, n), depth+1); err != nil {
				f.Close()
				return err
			}
		}
		if rerr != nil || len(names) == 0 {
			break
		}
	}
	f.Close()
	if err := unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		return &os.PathError{Op: "remove", Path: guestPath, Err: err}
	}
	return nil
}

// upload is a file being uploaded: a temporary file next to its
// destination, renamed over it once complete.
type upload struct {
	v       *fsView
	dirfd   int
	name    string
	tmp     string
	f       *os.File
	mode    uint32
	written int64
}

// createUpload makes p's missing parents and a temporary file beside p.
func (v *fsView) createUpload(p string, mode uint32) (*upload, error) {
	if rel, err := v.rel(p); err != nil {
		return nil, err
	} else if rel == "" {
		return nil, fmt.Errorf("upload %s: the top of the view itself: %w", p, errInvalid)
	}
	dfd, err := v.mkdirAll(path.Dir(p))
	if err != nil {
		return nil, err
	}
	if mode == 0 {
		mode = 0o644
	}
	name := path.Base(p)
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := "." + name
	if len(tmp) > 200 {
		tmp = tmp[:200]
	}
	tmp += ".upload-" + hex.EncodeToString(rnd[:])
	// O_EXCL|O_NOFOLLOW: a fresh inode, never something planted there.
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		unix.Close(dfd)
		return nil, &os.PathError{Op: "upload", Path: p, Err: err}
	}
	return &upload{v: v, dirfd: dfd, name: name, tmp: tmp, f: os.NewFile(uintptr(fd), tmp), mode: mode}, nil
}

func (u *upload) write(b []byte) error {
	n, err := u.f.Write(b)
	u.written += int64(n)
	return err
}

// commit sets the mode and renames the file into place (as the user).
func (u *upload) commit() error {
	defer unix.Close(u.dirfd)
	if err := u.f.Chmod(os.FileMode(u.mode & 0o777)); err != nil {
		u.f.Close()
		_ = unix.Unlinkat(u.dirfd, u.tmp, 0)
		return err
	}
	if u.mode&0o7000 != 0 { // setuid bits are the user's own to set
		_ = unix.Fchmod(int(u.f.Fd()), u.mode&0o7777)
	}
	if err := u.f.Close(); err != nil {
		_ = unix.Unlinkat(u.dirfd, u.tmp, 0)
		return err
	}
	if err := unix.Renameat(u.dirfd, u.tmp, u.dirfd, u.name); err != nil {
		_ = unix.Unlinkat(u.dirfd, u.tmp, 0)
		return &os.PathError{Op: "upload", Path: u.name, Err: err}
	}
	return nil
}

// abort removes the temporary file.
func (u *upload) abort() {
	u.f.Close()
	_ = unix.Unlinkat(u.dirfd, u.tmp, 0)
	unix.Close(u.dirfd)
}

// openRegular opens p for reading if it is a regular file of at most
// maxBytes, and describes it.
func (v *fsView) openRegular(p string, maxBytes int64) (*os.File, agentproto.FileInfo, error) {
	fd, err := v.open(p, unix.O_RDONLY)
	if err != nil {
		return nil, agentproto.FileInfo{}, err
	}
	fi, err := v.info(fd, "", p, nil)
	if err != nil {
		unix.Close(fd)
		return nil, fi, err
	}
	if fi.Type != agentproto.TypeFile {
		unix.Close(fd)
		return nil, fi, fmt.Errorf("read %s: %w", p, errNotRegular)
	}
	if fi.Size > maxBytes {
		unix.Close(fd)
		return nil, fi, fmt.Errorf("read %s: %d bytes, more than the %d allowed: %w", p, fi.Size, maxBytes, errTooLarge)
	}
	return os.NewFile(uintptr(fd), p), fi, nil
}
