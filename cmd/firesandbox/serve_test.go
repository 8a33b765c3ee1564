package main

import (
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/spf13/cobra"
)

func TestParsePools(t *testing.T) {
	got, err := parsePools("python=2, go=0,, bash=1..4")
	if err != nil || len(got) != 3 || got["python"] != (sandbox.PoolRange{Min: 2, Max: 2}) || got["go"] != (sandbox.PoolRange{}) ||
		got["bash"] != (sandbox.PoolRange{Min: 1, Max: 4}) {
		t.Fatalf("got %v %v", got, err)
	}
	for _, bad := range []string{"python", "python=x", "=1", "python=-1", "python=4..1", "python=1..99", "python=1..x"} {
		if _, err := parsePools(bad); err == nil || !isUsage(err) {
			t.Errorf("parsePools(%q) = %v, want a usage error", bad, err)
		}
	}
}

func TestServeRefusesPublicWithoutKey(t *testing.T) {
	t.Setenv("FIRESANDBOX_API_KEY", "")
	root := newRoot()
	root.SetArgs([]string{"serve", "--listen", "0.0.0.0:0", "--data-dir", t.TempDir()})
	err := root.Execute()
	if err == nil || !isUsage(err) || !strings.Contains(err.Error(), "API key") {
		t.Fatalf("serve on 0.0.0.0 without a key: %v", err)
	}
}

func TestClusterConfig(t *testing.T) {
	for _, k := range []string{"FIRESANDBOX_CLUSTER", "FIRESANDBOX_ADVERTISE", "FIRESANDBOX_REMOTE", "FIRESANDBOX_HOST_ID", "FIRESANDBOX_SIGNING_KEY"} {
		t.Setenv(k, "")
	}
	p := writeConfig(t, `
[cluster]
url = "postgres://fs:secret@db:5432/fs"
advertise = "http://10.0.0.11:7070"
host_id = "kvm-11"
capacity = 7
remote = "s3://bucket/cluster"
heartbeat = "1s"
ttl = "6s"
`)
	c, err := loadConfig(p, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FIRESANDBOX_REMOTE", "s3://from-env/x")
	cmd := &cobra.Command{}
	var f clusterFlags
	f.register(cmd.Flags())
	if err := cmd.Flags().Parse([]string{"--capacity", "9", "--advertise", "http://10.0.0.12:7070"}); err != nil {
		t.Fatal(err)
	}
	f.fromFile(cmd, c.Cluster)
	if f.url != "postgres://fs:secret@db:5432/fs" || f.hostID != "kvm-11" || f.heartbeat != time.Second || f.ttl != 6*time.Second {
		t.Fatalf("from the file: %+v", f)
	}
	if f.capacity != 9 || f.advertise != "http://10.0.0.12:7070" || f.remote != "s3://from-env/x" {
		t.Fatalf("flags and the environment must win over the file: %+v", f)
	}
	if _, err := loadConfig(writeConfig(t, "[cluster]\nurl = \"x\"\nttll = \"1s\"\n"), true); err == nil || !strings.Contains(err.Error(), "cluster.ttll") {
		t.Fatalf("a misspelt key: %v", err)
	}
}
