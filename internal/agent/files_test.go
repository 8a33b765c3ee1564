package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// guestRoot makes a directory tree that plays the guest root.
func guestRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"etc", "home/sandbox", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "etc/shadow"), []byte("root:$6$secret"), 0o600)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000::/home/sandbox:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nsandbox:x:1000:\n"), 0o644)
	return root
}

func TestFileCalls(t *testing.T) {
	root := guestRoot(t)
	c := startAgent(t, Config{Root: root})
	ctx := ctx10(t)
	home := "/home/sandbox"

	fi, err := c.Upload(ctx, home+"/src/pkg/main.py", strings.NewReader("print(1)\n"), 9, 0o755)
	if err != nil || fi.Type != agentproto.TypeFile || fi.Size != 9 || fi.Mode != 0o755 || fi.Path != home+"/src/pkg/main.py" {
		t.Fatalf("Upload = %+v, %v", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "home/sandbox/src/pkg/main.py")); string(b) != "print(1)\n" {
		t.Fatalf("uploaded content %q", b)
	}
	if _, err := c.MakeDir(ctx, home+"/src", false); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("MakeDir of an existing dir = %v, want fs.ErrExist", err)
	}
	if fi, err := c.MakeDir(ctx, home+"/a/b/c", true); err != nil || fi.Type != agentproto.TypeDir {
		t.Fatalf("MakeDir parents = %+v, %v", fi, err)
	}
	os.Symlink("pkg/main.py", filepath.Join(root, "home/sandbox/src/link"))

	ents, err := c.ListDir(ctx, home, 2)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, strings.TrimPrefix(e.Path, home+"/")+":"+string(e.Type))
	}
	if got, want := strings.Join(names, " "), "a:dir a/b:dir src:dir src/link:symlink src/pkg:dir"; got != want {
		t.Fatalf("ListDir depth 2 = %s, want %s", got, want)
	}
	if fi, err := c.Stat(ctx, home+"/src/link"); err != nil || fi.Type != agentproto.TypeSymlink || fi.Target != "pkg/main.py" {
		t.Fatalf("Stat of a symlink = %+v, %v", fi, err)
	}
	if fi, err := c.Move(ctx, home+"/src/pkg/main.py", home+"/a/main.py"); err != nil || fi.Path != home+"/a/main.py" || fi.Size != 9 {
		t.Fatalf("Move = %+v, %v", fi, err)
	}
	if err := c.Remove(ctx, home+"/a", false); err == nil {
		t.Fatal("removed a non-empty directory without recursive")
	}
	if err := c.Remove(ctx, home+"/a", true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, home+"/a"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat after Remove = %v, want fs.ErrNotExist", err)
	}
	if _, err := c.ListDir(ctx, home, 0); !errors.Is(err, agentproto.ErrMalformed) {
		t.Fatalf("ListDir depth 0 = %v, want refused", err)
	}
}

// Guest code planted a symlink in the sandbox's working directory; a
// download through it must not return the guest's /etc/shadow. Relative
// and absolute links both resolve inside the guest root (never the
// agent's /etc), and with Within they may not leave the working
// directory at all.
func TestDownloadCannotFollowPlantedSymlink(t *testing.T) {
	root := guestRoot(t)
	home := filepath.Join(root, "home/sandbox")
	os.Symlink("../../etc", filepath.Join(home, "rel"))
	os.Symlink("/etc", filepath.Join(home, "abs"))
	os.Symlink("/etc/shadow", filepath.Join(home, "shadow"))
	c := startAgent(t, Config{Root: root})
	ctx := ctx10(t)
	for _, p := range []string{"/home/sandbox/rel/shadow", "/home/sandbox/abs/shadow", "/home/sandbox/shadow"} {
		if b, err := c.ReadFile(ctx, p, 1<<20, agentproto.Within("/home/sandbox")); err == nil {
			t.Errorf("ReadFile(%s) within the work dir = %q", p, b)
		}
		if _, err := c.Stat(ctx, p, agentproto.Within("/home/sandbox")); err == nil && !strings.HasSuffix(p, "/shadow") {
			t.Errorf("Stat(%s) within the work dir succeeded", p)
		}
	}
	if _, err := c.ReadFile(ctx, "/etc/shadow", 1<<20, agentproto.Within("/home/sandbox")); !errors.Is(err, agentproto.ErrMalformed) {
		t.Fatalf("a path outside Within = %v, want refused before sending", err)
	}
	// Writes through the links are refused too.
	if _, err := c.Upload(ctx, "/home/sandbox/rel/evil", strings.NewReader("x"), 1, 0, agentproto.Within("/home/sandbox")); err == nil {
		t.Fatal("uploaded through a symlink out of the work dir")
	}
	if _, err := os.Stat(filepath.Join(root, "etc/evil")); err == nil {
		t.Fatal("a file appeared in the guest's /etc")
	}
}

// As the sandbox user, /etc/shadow is unreadable however it is named:
// file calls run with the user's permissions, not the agent's.
func TestFileCallsRunAsTheUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch users")
	}
	root := guestRoot(t)
	os.Chmod(root, 0o755) // t.TempDir is 0700
	home := filepath.Join(root, "home/sandbox")
	os.Chown(home, 1000, 1000)
	os.Symlink("../../etc", filepath.Join(home, "rel"))
	c := startAgent(t, Config{Root: root, UID: 1000, GID: 1000})
	ctx := ctx10(t)
	if b, err := c.ReadFile(ctx, "/home/sandbox/rel/shadow", 1<<20); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("ReadFile of shadow as the sandbox user = %q, %v; want permission denied", b, err)
	}
	if b, err := c.ReadFile(ctx, "/etc/shadow", 1<<20, agentproto.AsUser("root")); err != nil || string(b) != "root:$6$secret" {
		t.Fatalf("as root = %q, %v", b, err)
	}
	// What an upload creates, parents included, belongs to the user.
	fi, err := c.Upload(ctx, "/home/sandbox/new/deep/f.txt", strings.NewReader("hi"), 2, 0)
	if err != nil || fi.UID != 1000 || fi.Owner != "sandbox" {
		t.Fatalf("Upload = %+v, %v", fi, err)
	}
	for _, d := range []string{"new", "new/deep"} {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(home, d), &st); err != nil || st.Uid != 1000 || st.Gid != 1000 {
			t.Errorf("%s: owner %d:%d, %v; want 1000:1000", d, st.Uid, st.Gid, err)
		}
	}
	if _, err := c.Upload(ctx, "/etc/evil", strings.NewReader("x"), 1, 0); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("upload into /etc as the sandbox user = %v, want permission denied", err)
	}
	// WriteFiles (the batch form) also creates only what is missing, and
	// gives it to the user, leaving existing directories alone.
	os.MkdirAll(filepath.Join(home, "rootdir"), 0o777)
	if err := c.WriteFiles(ctx, "/home/sandbox", []agentproto.File{{Path: "rootdir/sub/x.txt", Content: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	syscall.Stat(filepath.Join(home, "rootdir"), &st)
	if st.Uid != 0 {
		t.Errorf("WriteFiles chowned an existing directory to %d", st.Uid)
	}
	syscall.Stat(filepath.Join(home, "rootdir/sub"), &st)
	if st.Uid != 1000 {
		t.Errorf("WriteFiles created rootdir/sub owned by %d, want 1000", st.Uid)
	}
}

// A FIFO or a device planted by guest code cannot hold the agent: the
// file calls fail (or, for an upload, replace the name) at once, and the
// agent answers pings throughout.
func TestPlantedFIFOAndDeviceDoNotJam(t *testing.T) {
	root := guestRoot(t)
	fifo := filepath.Join(root, "home/sandbox/main.py")
	if err := syscall.Mkfifo(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	c := startAgent(t, Config{Root: root})
	ctx := ctx10(t)
	start := time.Now()
	if b, err := c.ReadFile(ctx, "/home/sandbox/main.py", 100); err == nil {
		t.Fatalf("read a FIFO: %q", b)
	}
	if err := c.WriteFiles(ctx, "/home/sandbox", []agentproto.File{{Path: "main.py", Content: []byte("x")}}); err == nil {
		t.Fatal("WriteFiles wrote into a FIFO")
	}
	if _, err := c.ReadFile(ctx, "/dev/zero", 100, agentproto.AsUser("root")); err == nil {
		t.Fatal("read a device")
	}
	if _, err := c.WaitHello(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("the calls took %s", d)
	}
	// An upload replaces the FIFO with a regular file.
	if _, err := c.Upload(ctx, "/home/sandbox/main.py", strings.NewReader("print(1)"), 8, 0); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(fifo); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("after upload: %v %v", fi.Mode(), err)
	}
}

// throttled slows the host's writes to the guest, as a busy virtio link.
type throttled struct {
	net.Conn
	bytesPerSec int
}

func (c throttled) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := min(len(p)-n, 8<<10)
		time.Sleep(time.Duration(k) * time.Second / time.Duration(c.bytesPerSec))
		m, err := c.Conn.Write(p[n : n+k])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// A large upload is cut into chunks: pings, cancels and small calls pass
// while it is in flight, instead of waiting behind one huge frame.
func TestPingsPassDuringUpload(t *testing.T) {
	root := guestRoot(t)
	host, guest := net.Pipe()
	srv := NewServer(Config{Root: root, UID: -1, GID: -1}, nil)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(context.Background(), guest) }()
	c := agentproto.NewClient(throttled{host, 1 << 20}) // 1 MiB/s
	defer func() { c.Close(); guest.Close(); <-done }()
	ctx := ctx10(t)
	if _, err := c.WaitHello(ctx); err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("0123456789abcdef"), 3<<16) // 3 MiB: ~3 s on this link
	upDone := make(chan error, 1)
	go func() {
		_, err := c.Upload(context.Background(), "/home/sandbox/big.bin", bytes.NewReader(content), int64(len(content)), 0)
		upDone <- err
	}()
	time.Sleep(300 * time.Millisecond)
	for range 3 {
		start := time.Now()
		if _, err := c.WaitHello(ctx); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 700*time.Millisecond {
			t.Fatalf("a ping took %s during the upload", d)
		}
		select {
		case err := <-upDone:
			t.Fatalf("upload finished too early to test (%v)", err)
		default:
		}
	}
	if err := <-upDone; err != nil {
		t.Fatal(err)
	}
	got, err := c.ReadFile(ctx, "/home/sandbox/big.bin", int64(len(content)))
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
}

func TestDownloadStreamsLargeFile(t *testing.T) {
	root := guestRoot(t)
	content := bytes.Repeat([]byte("x"), 5<<20+17)
	os.WriteFile(filepath.Join(root, "home/sandbox/big"), content, 0o644)
	c := startAgent(t, Config{Root: root})
	var buf bytes.Buffer
	fi, err := c.Download(ctx10(t), "/home/sandbox/big", &buf, 6<<20)
	if err != nil || fi.Size != int64(len(content)) || !bytes.Equal(buf.Bytes(), content) {
		t.Fatalf("Download = %+v, %d bytes, %v", fi, buf.Len(), err)
	}
	if _, err := c.Download(ctx10(t), "/home/sandbox/big", io.Discard, 1<<20); !errors.Is(err, errAgentTooLarge) {
		t.Fatalf("Download over its limit = %v, want too large", err)
	}
}

// errAgentTooLarge matches an agent error of code too_large.
var errAgentTooLarge = &agentproto.AgentError{Code: agentproto.CodeTooLarge}

func TestWatchReportsChanges(t *testing.T) {
	root := guestRoot(t)
	home := filepath.Join(root, "home/sandbox")
	c := startAgent(t, Config{Root: root})
	var (
		mu  sync.Mutex
		evs []string
	)
	w, err := c.Watch(ctx10(t), "/home/sandbox", true, func(e agentproto.WatchEvents) {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range e.Events {
			evs = append(evs, string(ev.Op)+" "+ev.Name)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	os.WriteFile(filepath.Join(home, "a.txt"), []byte("1"), 0o644)
	os.Mkdir(filepath.Join(home, "sub"), 0o755)
	time.Sleep(100 * time.Millisecond) // the agent adds a watch for sub
	os.WriteFile(filepath.Join(home, "sub/b.txt"), []byte("2"), 0o644)
	os.Remove(filepath.Join(home, "a.txt"))
	want := []string{"create a.txt", "write a.txt", "create sub", "create sub/b.txt", "remove a.txt"}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got := strings.Join(evs, ", ")
		mu.Unlock()
		missing := ""
		for _, w := range want {
			if !strings.Contains(", "+got+",", ", "+w+",") {
				missing = w
				break
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events %q lack %q", got, missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
	w.Close()
	select {
	case <-w.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("watch did not end after Close")
	}
}
