package sandbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// lockedBuffer is a bytes.Buffer for output that arrives on the agent
// client's goroutine while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The guest agent's isolation and its process and file calls, in one
// real VM (what only the guest's kernel can show: nosuid and nodev,
// seccomp, no user namespaces, cgroups, terminals).
func TestAgentInRealGuest(t *testing.T) {
	m, _ := newTestManager(t)
	defer noLeftovers(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e, err := m.catalog.Lookup("python", "")
	if err != nil {
		t.Fatal(err)
	}
	vm, err := m.Acquire(ctx, e, true /* cold */)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	c := vm.Agent
	sh := func(t *testing.T, user, script string) (string, *agentproto.ExitResult) {
		t.Helper()
		var out lockedBuffer
		res, err := c.Exec(ctx, agentproto.ExecRequest{Argv: []string{"sh", "-c", script}, Dir: WorkDir, User: user,
			Limits: agentproto.Limits{WallMillis: 60_000}}, &out, &out)
		if err != nil {
			t.Fatalf("%q: %v", script, err)
		}
		return out.String(), res
	}

	t.Run("root is nosuid,nodev", func(t *testing.T) {
		out, _ := sh(t, "", "grep ' / ' /proc/self/mounts")
		if !strings.Contains(out, "nosuid") || !strings.Contains(out, "nodev") {
			t.Fatalf("the root is mounted %q", out)
		}
		// Guest root plants a setuid copy of id and a /dev/mem node on the
		// writable layer; neither gives anything.
		sh(t, "root", "cp /usr/bin/id ./suid-id && chmod 4755 suid-id && mknod ./mem c 1 1")
		if out, _ := sh(t, "", "./suid-id -u"); strings.TrimSpace(out) != "1000" {
			t.Errorf("a setuid-root binary ran with euid %q", strings.TrimSpace(out))
		}
		if out, res := sh(t, "root", "head -c 16 ./mem >/dev/null"); res.Code == 0 || !strings.Contains(out, "ermission denied") {
			t.Errorf("a planted /dev/mem node opened: code %d, %q", res.Code, out)
		}
	})

	t.Run("seccomp and no_new_privs", func(t *testing.T) {
		const probe = `
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(nr, *args)
    return 0 if r >= 0 else ctypes.get_errno()
print("keyctl", call(250, 0, -3, 0))
print("bpf", call(321, 0, 0, 0))
print("mount", call(165, b"none", b"/mnt", b"tmpfs", 0, None))
print("unshare", call(272, 0x10000000))
print("nnp", [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0])
`
		for _, user := range []string{"", "root"} { // root in the guest is confined too
			var out lockedBuffer
			res, err := c.Exec(ctx, agentproto.ExecRequest{Argv: []string{"python3", "-c", probe}, Dir: WorkDir, User: user}, &out, &out)
			if err != nil || res.Code != 0 {
				t.Fatalf("probe as %q: %v %+v %q", user, err, res, out.String())
			}
			for _, want := range []string{"keyctl 1\n", "bpf 1\n", "mount 1\n", "unshare 1\n", "nnp 1\n"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("as %q: probe printed %q, want %q", user, out.String(), want)
				}
			}
		}
		if out, _ := sh(t, "", "cat /proc/sys/user/max_user_namespaces"); strings.TrimSpace(out) != "0" {
			t.Errorf("max_user_namespaces = %q", out)
		}
	})

	t.Run("32-bit programs", func(t *testing.T) {
		// int 0x80 enters the i386 table: a 32-bit program runs (as
		// users' assembly often is), and the filter refuses its mount
		// as it refuses a 64-bit one. As guest root, whom nothing but
		// the filter stops, an unfiltered mount(NULL, NULL) fails EFAULT.
		if err := c.WriteFiles(ctx, WorkDir, []agentproto.File{{Path: "i386", Content: i386Program(), Mode: 0o755}}); err != nil {
			t.Fatal(err)
		}
		for _, user := range []string{"", "root"} {
			out, res := sh(t, user, "./i386")
			if out != "hello from i386\n" || res.Code != 1 || res.Signal != "" {
				t.Errorf("as %q: a 32-bit program printed %q and exited %d %s (%s); want its line, and 1: EPERM from mount", user, out, res.Code, res.Signal, res.Status)
			}
		}
	})

	t.Run("cgroups", func(t *testing.T) {
		out, _ := sh(t, "", "cat /proc/self/cgroup; cat /proc/1/cgroup")
		if !regexp.MustCompile(`0::/user/exec-[0-9-]+\n0::/agent\n`).MatchString(out) {
			t.Fatalf("cgroups: %q", out)
		}
	})

	t.Run("pty", func(t *testing.T) {
		var out lockedBuffer
		p, err := c.Start(ctx, agentproto.ExecRequest{Argv: []string{"bash", "-i"}, Dir: WorkDir,
			PTY: &agentproto.PTYSize{Cols: 90, Rows: 20}, Env: []string{"PS1=$ "}}, &out, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Detach()
		c.WriteStdin(ctx, p.PID, []byte("echo hi-$((40+2)); tty; stty size; id -u\n"))
		waitFor(t, &out, `hi-42\r?\n/dev/pts/[0-9]+\r?\n20 90\r?\n1000`)
		c.ResizePTY(ctx, p.PID, agentproto.PTYSize{Cols: 120, Rows: 40})
		c.WriteStdin(ctx, p.PID, []byte("stty size; exit\n"))
		waitFor(t, &out, `40 120`)
		if res, err := p.Wait(ctx); err != nil || res.Code != 0 {
			t.Fatalf("bash exit: %+v %v", res, err)
		}
	})

	t.Run("files", func(t *testing.T) {
		fi, err := c.Upload(ctx, WorkDir+"/up/deep/f.txt", strings.NewReader("hello"), 5, 0, agentproto.Within(WorkDir))
		if err != nil || fi.UID != 1000 {
			t.Fatalf("Upload = %+v, %v", fi, err)
		}
		if out, _ := sh(t, "", "stat -c '%u %U' up up/deep"); out != "1000 sandbox\n1000 sandbox\n" {
			t.Errorf("uploaded parents owned by %q", out)
		}
		// Guest code plants a link to /etc; a download through it is refused.
		sh(t, "", "ln -s /etc etc-link && ln -s ../../etc rel-link")
		for _, p := range []string{WorkDir + "/etc-link/shadow", WorkDir + "/rel-link/shadow"} {
			if b, err := c.ReadFile(ctx, p, 1<<20, agentproto.Within(WorkDir)); err == nil {
				t.Errorf("read %s: %q", p, b)
			}
			if b, err := c.ReadFile(ctx, p, 1<<20); !errors.Is(err, fs.ErrPermission) {
				t.Errorf("read %s as the sandbox user = %q, %v; want permission denied", p, b, err)
			}
		}
		// watch sees a create and a remove
		var mu sync.Mutex
		var evs []string
		w, err := c.Watch(ctx, WorkDir, false, func(e agentproto.WatchEvents) {
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
		sh(t, "", "touch watched.txt && rm watched.txt")
		deadline := time.Now().Add(20 * time.Second)
		for {
			mu.Lock()
			got := strings.Join(evs, ",")
			mu.Unlock()
			if strings.Contains(got, "create watched.txt") && strings.Contains(got, "remove watched.txt") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("watch events %q", got)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	// Last: CPU and memory hogs run in the background; the agent keeps
	// answering, and an exec beside them finishes.
	t.Run("agent answers under hogs", func(t *testing.T) {
		var hogs []*agentproto.Process
		for _, script := range []string{
			"while :; do :; done",
			"while :; do python3 -c 'a=[]\nwhile True: a.append(bytearray(8<<20))'; done",
			"while :; do :; done",
		} {
			p, err := c.Start(ctx, agentproto.ExecRequest{Argv: []string{"sh", "-c", script}, Dir: WorkDir, Background: true,
				Limits: agentproto.Limits{MemoryBytes: 4 << 30}}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			hogs = append(hogs, p)
		}
		defer func() {
			for _, p := range hogs {
				c.Signal(ctx, p.PID, "SIGKILL")
			}
		}()
		time.Sleep(5 * time.Second) // the memory hog reaches its ceiling
		for i := range 3 {
			start := time.Now()
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := c.WaitHello(pctx)
			cancel()
			if err != nil {
				t.Fatalf("ping %d under hogs: %v after %s", i, err, time.Since(start))
			}
			t.Logf("ping %d under hogs: %s", i, time.Since(start))
		}
		start := time.Now()
		out, res := sh(t, "", "echo alive")
		if res.Code != 0 || out != "alive\n" || time.Since(start) > 30*time.Second {
			t.Fatalf("exec under hogs: %+v %q after %s", res, out, time.Since(start))
		}
		t.Logf("exec under hogs: %s", time.Since(start))
		procs, err := c.Processes(ctx)
		if err != nil || len(procs) < len(hogs) {
			t.Fatalf("Processes = %+v, %v", procs, err)
		}
	})
}

func waitFor(t *testing.T, b *lockedBuffer, re string) {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(60 * time.Second)
	for !rx.MatchString(b.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("output %q never matched %q", b.String(), re)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// i386Program is a static 32-bit ELF that writes a line with write(2)
// through int 0x80, then calls mount(NULL, NULL, NULL) the same way and
// exits with its errno.
func i386Program() []byte {
	const base, hdr = 0x08048000, 52 + 32 // load address; ELF header and one program header
	msg := []byte("hello from i386\n")
	code := func(msgAddr uint32) []byte {
		var c []byte
		mov := func(op byte, v uint32) { c = binary.LittleEndian.AppendUint32(append(c, op), v) }
		mov(0xb8, 4) // eax = write
		mov(0xbb, 1) // ebx = stdout
		mov(0xb9, msgAddr)
		mov(0xba, uint32(len(msg)))
		c = append(c, 0xcd, 0x80)                                                 // int 0x80
		mov(0xb8, 21)                                                             // eax = mount
		c = append(c, 0x31, 0xdb, 0x31, 0xc9, 0x31, 0xd2, 0x31, 0xf6, 0x31, 0xff) // ebx ecx edx esi edi = 0
		c = append(c, 0xcd, 0x80)
		c = append(c, 0xf7, 0xd8, 0x89, 0xc3) // ebx = -eax
		mov(0xb8, 1)                          // eax = exit
		return append(c, 0xcd, 0x80)
	}
	body := code(0)
	body = append(code(uint32(base+hdr+len(body))), msg...)
	size := uint32(hdr + len(body))
	le := binary.LittleEndian
	b := []byte{0x7f, 'E', 'L', 'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	b = le.AppendUint16(b, 2) // ET_EXEC
	b = le.AppendUint16(b, 3) // EM_386
	b = le.AppendUint32(b, 1)
	b = le.AppendUint32(b, base+hdr) // entry
	b = le.AppendUint32(b, 52)       // program headers
	b = le.AppendUint32(b, 0)        // no sections
	b = le.AppendUint32(b, 0)
	for _, v := range []uint16{52, 32, 1, 0, 0, 0} { // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
		b = le.AppendUint16(b, v)
	}
	for _, v := range []uint32{1, 0, base, base, size, size, 5, 0x1000} { // PT_LOAD of the whole file, R+X
		b = le.AppendUint32(b, v)
	}
	return append(b, body...)
}
