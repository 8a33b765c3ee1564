package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/api"
	"github.com/firesandbox/firesandbox/internal/cluster"
	"github.com/firesandbox/firesandbox/internal/cluster/clustertest"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

// benchHost is one in-process host of a two-host cluster.
type benchHost struct {
	url  string
	mgr  *sandbox.Manager
	svc  *sandbox.Service
	node *cluster.Node
	srv  *api.Server
}

func (h *benchHost) close() {
	h.srv.Shutdown(context.Background())
	h.svc.Close(context.Background())
	h.node.Close(context.Background())
	h.mgr.Close()
}

func startBenchHost(ctx context.Context, dataDir, tmp, id, dbURL string) (*benchHost, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	h := &benchHost{url: "http://" + addr}
	if h.mgr, err = sandbox.New(sandbox.Config{DataDir: dataDir, RunDir: filepath.Join(tmp, id, "run")}); err != nil {
		return nil, err
	}
	if h.node, err = cluster.Open(ctx, cluster.Config{URL: dbURL, HostID: id, Address: h.url, Capacity: 2}); err != nil {
		return nil, err
	}
	if h.svc, err = sandbox.OpenService(h.mgr, sandbox.ServiceConfig{StateDir: filepath.Join(tmp, id, "state"), Directory: h.node}, nil); err != nil {
		return nil, err
	}
	if err := h.node.Attach(ctx, h.svc.Sandboxes); err != nil {
		return nil, err
	}
	outer := api.WithOuter(func(next http.Handler) http.Handler { return h.node.Handler(next, cluster.Routes{}) })
	if h.srv, err = api.Open(api.Config{Listen: addr}, h.svc, outer); err != nil {
		return nil, err
	}
	go h.srv.Serve(ln)
	return h, nil
}

// forwardingTable measures what a hop between hosts costs: the same exec
// in one sandbox (a real VM), sent to its owner and to another host that
// looks the owner up in the directory and forwards it. Two in-process
// hosts over a throwaway PostgreSQL on loopback.
func forwardingTable(ctx context.Context, dataDir, lang string, n int) error {
	pg, err := clustertest.NewPostgres()
	if errors.Is(err, clustertest.ErrNoPostgres) {
		fmt.Println("\nForwarding between hosts: skipped (no PostgreSQL server; make deps installs it)")
		return nil
	}
	if err != nil {
		return err
	}
	defer pg.Close()
	dbURL, err := pg.CreateDatabase(ctx)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "fsbench-cluster-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var hosts []*benchHost
	defer func() {
		for _, h := range hosts {
			h.close()
		}
	}()
	for _, id := range []string{"bench-owner", "bench-other"} {
		h, err := startBenchHost(ctx, dataDir, tmp, id, dbURL)
		if err != nil {
			return err
		}
		hosts = append(hosts, h)
	}
	post := func(url string, in any) (map[string]any, error) {
		b, _ := json.Marshal(in)
		resp, err := http.Post(url, "application/json", bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var out map[string]any
		if err := json.Unmarshal(raw, &out); err != nil || resp.StatusCode >= 300 {
			return nil, fmt.Errorf("POST %s: %d %s", url, resp.StatusCode, raw)
		}
		return out, nil
	}
	sb, err := post(hosts[0].url+"/v1/sandboxes", map[string]any{"language": lang})
	if err != nil {
		return err
	}
	id, _ := sb["id"].(string)
	defer func() {
		req, _ := http.NewRequest("DELETE", hosts[0].url+"/v1/sandboxes/"+id, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	exec := func(h *benchHost) (time.Duration, error) {
		start := time.Now()
		_, err := post(h.url+"/v1/sandboxes/"+id+"/exec", map[string]any{"cmd": []string{"true"}})
		return time.Since(start), err
	}
	get := func(h *benchHost) (time.Duration, error) {
		start := time.Now()
		resp, err := http.Get(h.url + "/v1/sandboxes/" + id)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return time.Since(start), err
	}
	fmt.Printf("\nForwarding between hosts: one %s sandbox, each request %d times to its owner and through another host, alternating:\n", lang, 3*n)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "request\tto the owner\tthrough another host\thop (median)\t")
	for _, m := range []struct {
		name string
		fn   func(*benchHost) (time.Duration, error)
	}{{"GET the sandbox (no VM)", get}, {"exec `true` (in the VM)", exec}} {
		direct, forwarded := &series{}, &series{}
		for i := -2; i < 3*n; i++ { // two rounds of warm-up
			d1, err := m.fn(hosts[0])
			if err != nil {
				return err
			}
			d2, err := m.fn(hosts[1])
			if err != nil {
				return err
			}
			if i >= 0 {
				direct.add(d1)
				forwarded.add(d2)
			}
		}
		fmt.Fprintf(tw, "%s\t%s (p90 %s)\t%s (p90 %s)\t%s\t\n", m.name, msf(direct.q(0.5)), msf(direct.q(0.9)),
			msf(forwarded.q(0.5)), msf(forwarded.q(0.9)), msf(forwarded.q(0.5)-direct.q(0.5)))
	}
	return tw.Flush()
}

func msf(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }
