package agentproto

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestBootRoundTrip(t *testing.T) {
	for name, b := range map[string]Boot{
		"minimal": {Channel: VirtioPortChannel("fs.agent.0"), Root: []string{"layer0"}},
		"qemu sandbox": {
			Channel: VirtioPortChannel("agent"), Root: []string{"layer0", "layer1", "layer2"}, RootFS: "erofs",
			Upper: "upper", Mounts: []Mount{{"mount0", "/data"}, {"mount1", "/opt/my-tool_1.2@x"}}, UID: 2000,
		},
		"firecracker": {
			Channel: VsockChannel(1024), Root: []string{"/dev/vda"}, Upper: "/dev/vdb",
			Mounts: []Mount{{"/dev/vdc", "/srv"}}, Modules: []string{"vsock", "vmw_vsock_virtio_transport"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			args, err := b.Args()
			if err != nil {
				t.Fatalf("Args: %v", err)
			}
			got, err := ParseBoot("console=ttyS0 quiet " + strings.Join(args, " ") + " panic=-1")
			if err != nil {
				t.Fatalf("ParseBoot(%q): %v", args, err)
			}
			if !reflect.DeepEqual(got, b) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, b)
			}
		})
	}
}

func TestBootArgsPartial(t *testing.T) {
	// A driver contributes the channel and modules, the manager the disks.
	args, err := Boot{Channel: VsockChannel(52), Modules: []string{"vsock"}}.Args()
	if want := []string{"fs.channel=vsock:52", AgentGODEBUG, "fs.modules=vsock"}; err != nil || !reflect.DeepEqual(args, want) {
		t.Fatalf("Args = %q, %v; want %q", args, err, want)
	}
	args, err = Boot{Root: []string{"layer0"}, RootFS: "squashfs", Upper: "upper"}.Args()
	if want := []string{"fs.root=layer0", "fs.rootfs=squashfs", "fs.upper=upper"}; err != nil || !reflect.DeepEqual(args, want) {
		t.Fatalf("Args = %q, %v; want %q", args, err, want)
	}
	if err := (Boot{Root: []string{"layer0"}}).Validate(); !errors.Is(err, ErrBadBoot) {
		t.Fatalf("Validate without a channel = %v, want ErrBadBoot", err)
	}
}

func TestParseBootDefaultsAndOverrides(t *testing.T) {
	b, err := ParseBoot("fs.channel=virtio-port:x fs.root=r fs.channel=vsock:9")
	if err != nil {
		t.Fatal(err)
	}
	if b.Channel != "vsock:9" || b.FSType() != "squashfs" || b.CommandUID() != 1000 {
		t.Fatalf("parsed %+v (fs %s, uid %d)", b, b.FSType(), b.CommandUID())
	}
	kind, _, port, err := ParseChannel(b.Channel)
	if kind != "vsock" || port != 9 || err != nil {
		t.Fatalf("ParseChannel = %s %d %v", kind, port, err)
	}
}

// A guest path with a carriage return split the kernel command line and
// injected an argument of its own (fs.uid=1 here; init= or any fs.* key
// just as well). Neither side accepts it now.
func TestBootRefusesInjection(t *testing.T) {
	for name, dir := range map[string]string{
		"carriage return": "/data\rfs.uid=1",
		"newline":         "/data\nfs.uid=1",
		"tab":             "/data\tinit=/bin/sh",
		"space":           "/data fs.uid=1",
		"comma":           "/data,/dev/vda@/etc",
		"quote":           `/data"`,
		"NUL":             "/data\x00",
		"escape":          "/data\x1b[2J",
		"non-ASCII":       "/dätä",
		"DEL":             "/data\x7f",
		"relative":        "data",
		"unclean":         "/data/../etc",
		"root":            "/",
		"proc":            "/proc/sys",
		"dev":             "/dev",
		"too long":        "/" + strings.Repeat("a", MaxMountBytes),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := (Boot{Mounts: []Mount{{"mount0", dir}}}).Args(); !errors.Is(err, ErrBadBoot) {
				t.Fatalf("Args accepted mount dir %q: %v", dir, err)
			}
			if strings.ContainsAny(dir, " \t\n\r,") {
				return // a separator: past the encoder, the guest sees two honest arguments
			}
			if b, err := ParseBoot("fs.channel=vsock:1 fs.root=r fs.mounts=mount0@" + dir); err == nil {
				t.Fatalf("ParseBoot accepted mount dir %q: %+v", dir, b)
			}
		})
	}
	for name, b := range map[string]Boot{
		"root ref with blank":     {Root: []string{"layer0 fs.uid=1"}},
		"root ref with comma":     {Root: []string{"a,b"}},
		"empty root ref":          {Root: []string{"layer0", ""}},
		"upper with @":            {Upper: "upper@/etc"},
		"ref outside /dev":        {Upper: "/etc/shadow"},
		"unclean /dev ref":        {Upper: "/dev/../etc/shadow"},
		"channel with blank":      {Channel: "virtio-port:a b"},
		"channel kind":            {Channel: "tcp:1.2.3.4"},
		"vsock port 0":            {Channel: "vsock:0"},
		"vsock port not a number": {Channel: "vsock:+1"},
		"module with dot":         {Modules: []string{"../x"}},
		"negative uid":            {UID: -1},
		"too many layers":         {Root: strings.Split(strings.Repeat("l,", MaxLayers)+"l", ",")},
		"too many mounts":         {Mounts: manyMounts(MaxMounts + 1)},
		"same dir twice":          {Mounts: []Mount{{"m0", "/data"}, {"m1", "/data"}}},
		"unknown rootfs":          {RootFS: "zfs"},
	} {
		t.Run(name, func(t *testing.T) {
			if args, err := b.Args(); !errors.Is(err, ErrBadBoot) {
				t.Fatalf("Args = %q, %v; want ErrBadBoot", args, err)
			}
		})
	}
	for _, bad := range []string{
		"fs.root=r", "fs.channel=vsock:1", "fs.channel=vsock:1 fs.root=a,,b", "fs.channel=vsock:1 fs.root=r fs.uid=0",
		"fs.channel=vsock:1 fs.root=r fs.uid=01000", "fs.channel=vsock:1 fs.root=r fs.mounts=m0", "fs.channel=vsock:1 fs.root=r fs.typo=1",
		"fs.channel=vsock:1 fs.root=r fs.modules=", "fs.channel=vsock:1 fs.root=r fs.rootfs=",
	} {
		if b, err := ParseBoot(bad); !errors.Is(err, ErrBadBoot) {
			t.Errorf("ParseBoot(%q) = %+v, %v; want ErrBadBoot", bad, b, err)
		}
	}
}

func manyMounts(n int) []Mount {
	ms := make([]Mount, n)
	for i := range ms {
		ms[i] = Mount{Disk: "m", Dir: "/d" + strings.Repeat("x", i)}
	}
	return ms
}

// FuzzParseBoot: whatever a command line holds, a contract ParseBoot
// accepts encodes back to arguments that parse to the same contract, and
// none of its values can split into more than one argument or list item.
func FuzzParseBoot(f *testing.F) {
	f.Add("console=ttyS0 fs.channel=virtio-port:agent fs.root=layer0,layer1 fs.rootfs=erofs fs.upper=upper fs.mounts=mount0@/data fs.uid=2000")
	f.Add("fs.channel=vsock:1024 fs.root=/dev/vda fs.modules=vsock,vmw_vsock_virtio_transport")
	f.Add("fs.channel=vsock:1 fs.root=r fs.mounts=m0@/data\rfs.uid=1")
	f.Fuzz(func(t *testing.T, cmdline string) {
		b, err := ParseBoot(cmdline)
		if err != nil {
			if !errors.Is(err, ErrBadBoot) {
				t.Fatalf("ParseBoot error %v does not wrap ErrBadBoot", err)
			}
			return
		}
		args, err := b.Args()
		if err != nil {
			t.Fatalf("ParseBoot accepted %+v but Args refuses it: %v", b, err)
		}
		for _, a := range args {
			if strings.IndexFunc(a, func(r rune) bool { return r <= ' ' || r >= 0x7f }) >= 0 {
				t.Fatalf("argument %q holds a blank, control or non-ASCII character", a)
			}
		}
		again, err := ParseBoot(strings.Join(args, " "))
		if err != nil || !reflect.DeepEqual(again, b) {
			t.Fatalf("round trip of %+v: %+v, %v", b, again, err)
		}
	})
}

// WithModules merges every fs.modules into one at the end, so a driver's
// groups and the caller's all load (a later fs.modules would override).
func TestWithModules(t *testing.T) {
	for name, tc := range map[string]struct {
		args, groups []string
		want         string
	}{
		"none asked":    {[]string{"fs.root=a"}, []string{"net"}, "fs.root=a fs.modules=net"},
		"merged":        {[]string{"fs.modules=erofs", "fs.root=a"}, []string{"vsock", "net"}, "fs.root=a fs.modules=erofs,vsock,net"},
		"two merged":    {[]string{"fs.modules=a", "fs.modules=b,a"}, []string{"net"}, "fs.modules=a,b,net"},
		"each once":     {[]string{"fs.modules=net"}, []string{"net"}, "fs.modules=net"},
		"nothing added": {[]string{"quiet"}, nil, "quiet"},
	} {
		got := WithModules(tc.args, tc.groups...)
		if strings.Join(got, " ") != tc.want {
			t.Errorf("%s: %q, want %q", name, got, tc.want)
		}
		if _, err := ParseBoot(strings.Join(append(got, "fs.channel=vsock:1", "fs.root=x"), " ")); err != nil {
			t.Errorf("%s: the result does not parse: %v", name, err)
		}
	}
}
