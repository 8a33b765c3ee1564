package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// loaded runs `firesandbox languages` (cheap, no VM) with args and returns
// the settings the command saw.
func loaded(t *testing.T, args ...string) (*globalFlags, error) {
	t.Helper()
	g := &globalFlags{}
	root := newRootWith(g)
	root.SetArgs(append(args, "languages"))
	root.SetOut(new(strings.Builder))
	devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	defer devnull.Close()
	stdout := os.Stdout
	os.Stdout = devnull
	defer func() { os.Stdout = stdout }()
	return g, root.Execute()
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigFile(t *testing.T) {
	data := t.TempDir()
	for _, k := range []string{"FIRESANDBOX_DATA", "FIRESANDBOX_DRIVER", "FIRESANDBOX_CONFIG", "FIRESANDBOX_RUN"} {
		t.Setenv(k, "")
	}
	cfg := writeConfig(t, `
data_dir = "`+data+`"
driver = "qemu"
accel = "tcg"
memory_mib = 768
disk_layering = "clone"
[qemu]
tb_size_mib = 32
[firecracker]
chroot_base = "/srv/fsjail"
[snapshots]
trusted_keys = []
[serve]
listen = "127.0.0.1:7171"
max_vms = 3
queue_wait = "5s"
[serve.pools]
python = "1..3"
`)
	g, err := loaded(t, "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if g.dataDir != data || g.driver != "qemu" || g.accel != "tcg" || g.memoryMiB != 768 || g.config().DiskLayering != "clone" {
		t.Fatalf("globals from the file: %+v", g)
	}
	vc := g.vmmConfig()
	if vc.QEMU.TBSizeMiB != 32 || vc.Firecracker.ChrootBase != "/srv/fsjail" || vc.Driver != "qemu" {
		t.Fatalf("driver settings from the file: %+v", vc)
	}
	s := g.file.Serve
	if s.Listen != "127.0.0.1:7171" || s.MaxVMs != 3 || s.QueueWait != 5*time.Second || s.Pools["python"] != (sandbox.PoolRange{Min: 1, Max: 3}) {
		t.Fatalf("[serve] from the file: %+v", s)
	}

	// A flag beats the environment, which beats the file.
	t.Setenv("FIRESANDBOX_DRIVER", "firecracker")
	if g, err = loaded(t, "--config", cfg); err != nil || g.driver != "firecracker" {
		t.Fatalf("env over file: %q %v", g.driver, err)
	}
	if g, err = loaded(t, "--config", cfg, "--driver", "auto", "--memory", "1024"); err != nil || g.driver != "auto" || g.memoryMiB != 1024 {
		t.Fatalf("flags over env and file: %q %d %v", g.driver, g.memoryMiB, err)
	}
	t.Setenv("FIRESANDBOX_DRIVER", "")
	if g, err = loaded(t, "--config", cfg, "--disk-layering", "auto"); err != nil || g.config().DiskLayering != "auto" {
		t.Fatalf("--disk-layering over the file: %q %v", g.layering, err)
	}
	if g, err = loaded(t, "--config", cfg, "--no-jailer"); err != nil || !g.vmmConfig().Firecracker.NoJailer {
		t.Fatalf("--no-jailer: %v", err)
	}
}

func TestConfigFileErrors(t *testing.T) {
	t.Setenv("FIRESANDBOX_CONFIG", "")
	for name, tc := range map[string]struct{ text, want string }{
		"unknown key":        {"data_dir = \"/x\"\nmemroy_mib = 5\n", "unknown keys: memroy_mib"},
		"unknown in section": {"[qemu]\ntb_sise_mib = 1\n", "unknown keys: qemu.tb_sise_mib"},
		"bad driver":         {"driver = \"xen\"\n", `driver "xen"`},
		"bad pool":           {"[serve.pools]\npython = \"4..1\"\n", "pool size"},
		"not toml":           {"driver = \n", "config"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := loaded(t, "--config", writeConfig(t, tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !isUsage(err) {
				t.Fatalf("got %v, want a usage error with %q", err, tc.want)
			}
		})
	}
	if _, err := loaded(t, "--config", "/nonexistent/config.toml"); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("a --config that does not exist: %v", err)
	}
}
