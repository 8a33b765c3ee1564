package agent

import (
	"encoding/binary"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// seccompData encodes a struct seccomp_data for x/net/bpf's interpreter,
// which loads words big-endian (the kernel loads them in host order; the
// program only compares whole words, so this is the same test).
func seccompData(arch, nr uint32) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[0:], nr)
	binary.BigEndian.PutUint32(b[4:], arch)
	return b
}

func TestFilterProgram(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter is defined for amd64")
	}
	raw, err := filterProgram(syscallABIs)
	if err != nil {
		t.Fatal(err)
	}
	var prog []bpf.Instruction
	for _, r := range raw {
		prog = append(prog, r.Disassemble())
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	const i386Mount, i386Write, i386Exit = 21, 4, 1 // in the i386 table, reached through int 0x80
	for name, tc := range map[string]struct {
		arch, nr uint32
		want     uint32
	}{
		"read":              {unix.AUDIT_ARCH_X86_64, unix.SYS_READ, retAllow},
		"clone3":            {unix.AUDIT_ARCH_X86_64, unix.SYS_CLONE3, retAllow},
		"chroot (exec)":     {unix.AUDIT_ARCH_X86_64, unix.SYS_CHROOT, retAllow},
		"bpf":               {unix.AUDIT_ARCH_X86_64, unix.SYS_BPF, retErrno | uint32(unix.EPERM)},
		"keyctl":            {unix.AUDIT_ARCH_X86_64, unix.SYS_KEYCTL, retErrno | uint32(unix.EPERM)},
		"mount":             {unix.AUDIT_ARCH_X86_64, unix.SYS_MOUNT, retErrno | uint32(unix.EPERM)},
		"first denied":      {unix.AUDIT_ARCH_X86_64, deniedSyscalls[0], retErrno | uint32(unix.EPERM)},
		"last denied":       {unix.AUDIT_ARCH_X86_64, deniedSyscalls[len(deniedSyscalls)-1], retErrno | uint32(unix.EPERM)},
		"x32 mount":         {unix.AUDIT_ARCH_X86_64, x32SyscallBit | unix.SYS_MOUNT, retErrno | uint32(unix.ENOSYS)},
		"i386 mount":        {unix.AUDIT_ARCH_I386, i386Mount, retErrno | uint32(unix.EPERM)},
		"i386 write":        {unix.AUDIT_ARCH_I386, i386Write, retAllow},
		"i386 exit":         {unix.AUDIT_ARCH_I386, i386Exit, retAllow},
		"i386 keyctl":       {unix.AUDIT_ARCH_I386, 288, retErrno | uint32(unix.EPERM)},
		"i386 vm86":         {unix.AUDIT_ARCH_I386, 166, retErrno | uint32(unix.EPERM)},
		"i386 last denied":  {unix.AUDIT_ARCH_I386, deniedSyscalls386[len(deniedSyscalls386)-1], retErrno | uint32(unix.EPERM)},
		"i386 x32 bit":      {unix.AUDIT_ARCH_I386, x32SyscallBit | 4, retAllow}, // no x32 in the i386 table: an unknown number, ENOSYS from the kernel
		"other ABI":         {unix.AUDIT_ARCH_AARCH64, unix.SYS_READ, retKillProcess},
		"perf_event_open":   {unix.AUDIT_ARCH_X86_64, unix.SYS_PERF_EVENT_OPEN, retErrno | uint32(unix.EPERM)},
		"userfaultfd":       {unix.AUDIT_ARCH_X86_64, unix.SYS_USERFAULTFD, retErrno | uint32(unix.EPERM)},
		"kexec_file_load":   {unix.AUDIT_ARCH_X86_64, unix.SYS_KEXEC_FILE_LOAD, retErrno | uint32(unix.EPERM)},
		"finit_module":      {unix.AUDIT_ARCH_X86_64, unix.SYS_FINIT_MODULE, retErrno | uint32(unix.EPERM)},
		"io_uring_setup":    {unix.AUDIT_ARCH_X86_64, unix.SYS_IO_URING_SETUP, retErrno | uint32(unix.EPERM)},
		"unshare":           {unix.AUDIT_ARCH_X86_64, unix.SYS_UNSHARE, retErrno | uint32(unix.EPERM)},
		"open_by_handle_at": {unix.AUDIT_ARCH_X86_64, unix.SYS_OPEN_BY_HANDLE_AT, retErrno | uint32(unix.EPERM)},
	} {
		got, err := vm.Run(seccompData(tc.arch, tc.nr))
		if err != nil || uint32(got) != tc.want {
			t.Errorf("%s: filter returns %#x, %v; want %#x", name, got, err, tc.want)
		}
	}
}

// probe makes the system calls the filter denies, from a program, and
// prints each errno (0: the call got through).
const probe = `
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(nr, *args)
    return 0 if r >= 0 else ctypes.get_errno()
print("keyctl", call(250, 0, -3, 0))          # KEYCTL_GET_KEYRING_ID of the session keyring
print("userfaultfd", call(323, 0))
print("mount", call(165, b"none", b"/nonexistent", b"tmpfs", 0, None))
print("nnp", [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0])
`

// User processes run under no_new_privs and the filter; the agent's own
// threads do not.
func TestConfinedExecs(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter is defined for amd64")
	}
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("needs python3 to make raw system calls")
	}
	c := startAgent(t, Config{Confine: true})
	r := run(t, c, agentproto.ExecRequest{Argv: []string{py, "-c", probe}})
	want := map[string]string{"keyctl": "1", "userfaultfd": "1", "mount": "1", "nnp": "1"} // EPERM is 1
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		k, v, _ := strings.Cut(line, " ")
		if w, ok := want[k]; ok && v != w {
			t.Errorf("confined %s = %s, want %s", k, v, w)
		}
		delete(want, k)
	}
	if len(want) > 0 || r.Code != 0 {
		t.Fatalf("probe: %+v stdout %q stderr %q", r.ExitResult, r.stdout, r.stderr)
	}
	// Unconfined, the same probe gets through: the test can fail.
	u := startAgent(t, Config{})
	r = run(t, u, agentproto.ExecRequest{Argv: []string{py, "-c", probe}})
	if !strings.Contains(r.stdout, "keyctl 0") || !strings.Contains(r.stdout, "nnp 0") {
		t.Fatalf("unconfined probe: %q", r.stdout)
	}
	// The agent's own threads keep neither the filter nor no_new_privs.
	if _, err := unix.KeyctlGetKeyringID(unix.KEY_SPEC_SESSION_KEYRING, false); err != nil {
		t.Fatalf("the agent itself lost keyctl: %v", err)
	}
	if b, _ := os.ReadFile("/proc/thread-self/status"); !strings.Contains(string(b), "NoNewPrivs:\t0") {
		t.Fatal("the agent's thread has no_new_privs")
	}
}
