package testutil

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// VMMProcesses counts the VMM processes (QEMU, Firecracker) that descend
// from this test process: the VMs a test started and has not stopped. It
// follows parent links, not command lines: a confined QEMU gets its files
// as descriptors, so its command line names no run directory. A QEMU
// started ahead and still waiting for a restore (serve's prestart) holds
// no VM and is not counted (see SpareVMM).
func VMMProcesses() int {
	parent := map[int]int{}
	vmm := map[int]bool{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parens.
		s := string(b)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		comm := s[open+1 : close]
		f := strings.Fields(s[close+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		parent[pid] = ppid
		if (strings.HasPrefix(comm, "qemu-system") || strings.HasPrefix(comm, "firecracker")) && !SpareVMM(pid) {
			vmm[pid] = true
		}
	}
	self := os.Getpid()
	n := 0
	for pid := range vmm {
		for p, hops := parent[pid], 0; p > 1 && hops < 64; p, hops = parent[p], hops+1 {
			if p == self {
				n++
				break
			}
		}
	}
	return n
}

// SpareVMM says pid is a confined QEMU started ahead that no restore has
// taken yet: it is chrooted into the jail of a qemu-spare-* run dir (a
// restore that takes it renames the dir to its VM's).
func SpareVMM(pid int) bool {
	root, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "root"))
	return err == nil && strings.HasPrefix(filepath.Base(filepath.Dir(root)), "qemu-spare-")
}
