// Command firesandbox-bench measures firesandbox on this host and prints
// tables. Paths are measured side by side in one run, so they compare;
// numbers from different hosts do not. `make bench` runs it.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/image"
	"github.com/firesandbox/firesandbox/internal/sandbox"
)

func main() {
	n := flag.Int("n", 7, "runs per measurement")
	clones := flag.Int("clones", 3, "VMs restored at once for the memory table")
	dataDir := flag.String("data-dir", envOr("FIRESANDBOX_DATA", sandbox.DefaultDataDir), "data directory")
	lang := flag.String("language", "python", "language to measure")
	formatsOnly := flag.Bool("formats-only", false, "only compare image formats (no VMs)")
	sandboxesOnly := flag.Bool("sandboxes-only", false, "only measure long-lived sandboxes (create, fork, pause, resume, disk)")
	sandboxRuns := flag.Int("sandbox-runs", 3, "runs per row of the sandbox table")
	forwardingOnly := flag.Bool("forwarding-only", false, "only measure forwarding between two hosts of a cluster")
	networkOnly := flag.Bool("network-only", false, "only measure what a VM's network adds (network.go)")
	restoreOnly := flag.Bool("restore-only", false, "only break restore-to-ready into its parts (restore.go)")
	densityOnly := flag.Bool("density-only", false, "only the density, idle CPU and tb-size tables (density.go)")
	throughputOnly := flag.Bool("throughput-only", false, "only the throughput table (throughput.go)")
	languages := flag.Bool("languages", false, "per language: cold, restore and pool, to ready and to result, and snapshot size (languages.go)")
	density := flag.String("density", "10,50", "numbers of idle restored VMs alive at once for the density table")
	idleWindow := flag.Duration("idle-window", 30*time.Second, "how long idle CPU is measured")
	tbSizes := flag.String("tb-sizes", "8,16,32,64", "TCG translation cache sizes (MiB) to compare")
	throughputOps := flag.Int("throughput-ops", 16, "operations per row of the throughput table")
	burstOnly := flag.Bool("burst-only", false, "only the pool burst table (burst.go)")
	burst := flag.Int("burst", 20, "one-shot runs in the pool burst table (0: none)")
	burstGap := flag.Duration("burst-gap", time.Second, "time between the burst's runs (a host's restore rate bounds what any pool can serve)")
	burstPools := flag.String("burst-pools", "1,1..4", "pool sizes (N or MIN..MAX) the burst is sent to, comma-separated")
	plots := flag.String("plots", "bench-plots", "directory for SVG plots beside the tables (\"\" for none)")
	flag.Parse()
	if *plots != "" {
		if err := os.MkdirAll(*plots, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
	var ranges []sandbox.PoolRange
	for _, f := range strings.Split(*burstPools, ",") {
		r, err := sandbox.ParsePoolRange(strings.TrimSpace(f))
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -burst-pools:", err)
			os.Exit(2)
		}
		ranges = append(ranges, r)
	}
	opts := benchOpts{density: ints(*density), idleWindow: *idleWindow, tbSizes: ints(*tbSizes), throughputOps: *throughputOps, plots: *plots,
		burst: *burst, burstGap: *burstGap, burstPools: ranges}
	var err error
	switch {
	case *burstOnly:
		err = withManager(*dataDir, *lang, func(ctx context.Context, mgr *sandbox.Manager, e *image.Entry) error {
			return burstTable(ctx, mgr, e, opts.burst, opts.burstGap, opts.burstPools)
		})
	case *prewarmOnly:
		err = prewarmTable(context.Background(), *dataDir)
	case *restoreOnly:
		err = restoreTable(context.Background(), *lang, *n, restoreVariants(*dataDir))
	case *densityOnly:
		err = withManager(*dataDir, *lang, func(ctx context.Context, mgr *sandbox.Manager, e *image.Entry) error {
			return densityTables(ctx, *dataDir, mgr, e, *n, opts)
		})
	case *throughputOnly:
		err = withManager(*dataDir, *lang, func(ctx context.Context, mgr *sandbox.Manager, e *image.Entry) error {
			return throughputTable(ctx, mgr, e, []int{1, 2, 4, 8}, opts.throughputOps, opts.plots)
		})
	case *languages:
		err = languagesTable(context.Background(), *dataDir, *n, 1)
	case *networkOnly:
		err = networkTable(context.Background(), *dataDir, *lang, *n)
	case *forwardingOnly:
		err = forwardingTable(context.Background(), *dataDir, *lang, *n)
	case *sandboxesOnly:
		var mgr *sandbox.Manager
		if mgr, err = sandbox.New(sandbox.Config{DataDir: *dataDir}); err == nil {
			err = sandboxTable(context.Background(), mgr, *lang, *sandboxRuns)
			mgr.Close()
		}
	case *formatsOnly:
		var mgr *sandbox.Manager
		if mgr, err = sandbox.New(sandbox.Config{DataDir: *dataDir}); err == nil {
			err = formatTable(context.Background(), mgr)
		}
	default:
		err = run(*dataDir, *lang, *n, *clones, *sandboxRuns, opts)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// benchOpts are the flags of the tables added to the default run.
type benchOpts struct {
	density       []int
	idleWindow    time.Duration
	tbSizes       []int
	throughputOps int
	plots         string
	burst         int
	burstGap      time.Duration
	burstPools    []sandbox.PoolRange
}

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

func withManager(dataDir, lang string, fn func(context.Context, *sandbox.Manager, *image.Entry) error) error {
	mgr, err := sandbox.New(sandbox.Config{DataDir: dataDir})
	if err != nil {
		return err
	}
	defer mgr.Close()
	e, err := mgr.Catalog().Lookup(lang, "")
	if err != nil {
		return err
	}
	return fn(context.Background(), mgr, e)
}

// densityTables: density with idle CPU, then the tb-size comparison.
func densityTables(ctx context.Context, dataDir string, mgr *sandbox.Manager, e *image.Entry, n int, o benchOpts) error {
	if err := densityTable(ctx, mgr, e, o.density, o.idleWindow, o.plots); err != nil {
		return err
	}
	return tbSizeTable(ctx, dataDir, e, o.tbSizes, min(n, 3))
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}

type series struct {
	name string
	d    []time.Duration
}

func (s *series) add(d time.Duration) { s.d = append(s.d, d) }

func (s *series) q(q float64) time.Duration {
	if len(s.d) == 0 {
		return 0
	}
	c := append([]time.Duration(nil), s.d...)
	sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
	return c[int(q*float64(len(c)-1)+0.5)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/1e6) }

func run(dataDir, lang string, n, clones, sandboxRuns int, o benchOpts) error {
	ctx := context.Background()
	mgr, err := sandbox.New(sandbox.Config{DataDir: dataDir})
	if err != nil {
		return err
	}
	defer mgr.Close()
	e, err := mgr.Catalog().Lookup(lang, "")
	if err != nil {
		return err
	}
	// The same restores without the prewarmed runtime, for comparison.
	plain, err := sandbox.New(sandbox.Config{DataDir: dataDir, NoPrewarm: true})
	if err != nil {
		return err
	}
	defer plain.Close()
	req := func(cold bool) sandbox.RunRequest {
		return sandbox.RunRequest{Language: lang, Cold: cold, Args: e.Test.Args, Stdin: []byte(e.Test.Stdin),
			Files: []agentproto.File{{Content: []byte(e.Test.Code)}}}
	}
	onceWith := func(mgr *sandbox.Manager, cold bool) (*sandbox.RunResult, error) {
		var out bytes.Buffer
		res, err := mgr.Run(ctx, req(cold), sandbox.Streams{Stdout: &out})
		if err == nil && out.String() != e.Test.Stdout {
			err = fmt.Errorf("unexpected output %q", out.String())
		}
		return res, err
	}
	once := func(cold bool) (*sandbox.RunResult, error) { return onceWith(mgr, cold) }
	fmt.Printf("firesandbox bench: %s, %d runs per row, data %s\n", lang, n, dataDir)

	// Unmeasured: settle the accelerator choice and make the snapshot.
	if _, err := once(true); err != nil {
		return err
	}
	if _, err := once(false); err != nil {
		return err
	}
	if _, err := onceWith(plain, false); err != nil {
		return err
	}

	coldReady, coldFirst := &series{name: "cold boot"}, &series{name: "cold boot"}
	restReady, restFirst := &series{name: "snapshot restore"}, &series{name: "snapshot restore"}
	plainReady, plainFirst := &series{name: "restore, no prewarm"}, &series{name: "restore, no prewarm"}
	poolFirst := &series{name: "warm pool hit"}
	for i := 0; i < n; i++ { // interleaved, so drift hits both alike
		r, err := once(true)
		if err != nil {
			return err
		}
		coldReady.add(r.Ready)
		coldFirst.add(r.Total)
		r, err = once(false)
		if err != nil {
			return err
		}
		restReady.add(r.Ready)
		restFirst.add(r.Total)
		r, err = onceWith(plain, false)
		if err != nil {
			return err
		}
		plainReady.add(r.Ready)
		plainFirst.add(r.Total)
	}
	if err := mgr.StartPool(ctx, lang, sandbox.PoolRange{Min: 1, Max: 1}, true /* warm */); err != nil {
		return err
	}
	p := mgr.Pool(e.Name)
	for i := 0; i < n; i++ {
		if err := p.WaitFull(ctx); err != nil {
			return err
		}
		r, err := once(false)
		if err != nil {
			return err
		}
		if !r.Pooled {
			return fmt.Errorf("pool miss while the pool was full")
		}
		poolFirst.add(r.Total)
	}
	mgr.StartPool(ctx, lang, sandbox.PoolRange{}, false)

	fmt.Println("\nTime to the program's result (includes starting the VM and running the test program).")
	fmt.Println("\"snapshot restore\" and the pool use the prewarmed runtime where the language has one:")
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\tready median\tready p95\tresult median\tresult p95\tspeedup vs cold\t")
	base := coldFirst.q(0.5)
	for _, row := range []struct{ ready, first *series }{{coldReady, coldFirst}, {plainReady, plainFirst}, {restReady, restFirst}, {nil, poolFirst}} {
		rm, rp := "-", "-"
		if row.ready != nil {
			rm, rp = ms(row.ready.q(0.5)), ms(row.ready.q(0.95))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1fx\t\n", row.first.name, rm, rp, ms(row.first.q(0.5)), ms(row.first.q(0.95)),
			float64(base)/float64(row.first.q(0.5)))
	}
	tw.Flush()

	if err := snapshotTable(mgr); err != nil {
		return err
	}
	if err := memoryTable(ctx, mgr, e, clones); err != nil {
		return err
	}
	if err := restoreTable(ctx, lang, n, restoreVariants(dataDir)); err != nil {
		return err
	}
	if err := densityTables(ctx, dataDir, mgr, e, n, o); err != nil {
		return err
	}
	if err := throughputTable(ctx, mgr, e, []int{1, 2, 4, 8}, o.throughputOps, o.plots); err != nil {
		return err
	}
	if err := burstTable(ctx, mgr, e, o.burst, o.burstGap, o.burstPools); err != nil {
		return err
	}
	if err := sandboxTable(ctx, mgr, lang, sandboxRuns); err != nil {
		return err
	}
	if err := forwardingTable(ctx, dataDir, lang, n); err != nil {
		return err
	}
	if err := networkTable(ctx, dataDir, lang, n); err != nil {
		return err
	}
	if err := prewarmTable(ctx, dataDir); err != nil {
		return err
	}
	return formatTable(ctx, mgr)
}

// formatTable packs one tree, the base layer's, in each image format and
// compares build time and size.
func formatTable(ctx context.Context, mgr *sandbox.Manager) error {
	ims, err := mgr.Images().List()
	if err != nil {
		return err
	}
	tree := ""
	for _, im := range ims {
		if im.Language == "base" {
			if _, err := os.Stat(filepath.Join(im.Dir, "tree")); err == nil {
				tree = filepath.Join(im.Dir, "tree")
				break
			}
		}
	}
	if tree == "" {
		fmt.Println("\nImage formats: skipped (no base layer tree; run make image)")
		return nil
	}
	tmp, err := os.MkdirTemp("", "fsbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var unpacked int64
	filepath.Walk(tree, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			unpacked += fi.Size()
		}
		return nil
	})
	fmt.Printf("\nImage formats, the same tree (base layer, %.0f MiB of files) packed each way:\n", float64(unpacked)/(1<<20))
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "format\tbuild time\tsize\ton disk\tvs files\t")
	for _, f := range []string{image.FormatSquashFS, image.FormatEROFS, image.FormatExt4} {
		out := filepath.Join(tmp, "layer."+f)
		start := time.Now()
		if err := image.Pack(ctx, f, tree, out, io.Discard); err != nil {
			fmt.Fprintf(tw, "%s\tfailed: %v\t\t\t\t\n", f, err)
			continue
		}
		took := time.Since(start)
		var st syscall.Stat_t
		fi, _ := os.Stat(out)
		syscall.Stat(out, &st)
		fmt.Fprintf(tw, "%s\t%s\t%.1f MiB\t%.1f MiB\t%.0f%%\t\n", f, took.Round(100*time.Millisecond),
			float64(fi.Size())/(1<<20), float64(st.Blocks*512)/(1<<20), 100*float64(st.Blocks*512)/float64(unpacked))
		os.Remove(out)
	}
	return tw.Flush()
}

func snapshotTable(mgr *sandbox.Manager) error {
	list, err := mgr.Snapshots().List()
	if err != nil {
		return err
	}
	fmt.Println("\nSnapshots on disk (memory files are sparse):")
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "snapshot\tapparent\ton disk\t")
	for _, s := range list {
		fmt.Fprintf(tw, "%s\t%.1f MiB\t%.1f MiB\t\n", s.Key, float64(s.Size())/(1<<20), float64(s.DiskBytes)/(1<<20))
	}
	return tw.Flush()
}

// memoryTable boots one VM cold and restores several, all alive at once,
// runs the test program in each, then reads each QEMU's smaps_rollup: PSS
// shows what restores share (the snapshot's RAM in the page cache).
func memoryTable(ctx context.Context, mgr *sandbox.Manager, e *image.Entry, clones int) error {
	type row struct {
		name string
		vm   *sandbox.VM
	}
	var rows []row
	defer func() {
		for _, r := range rows {
			r.vm.Close()
		}
	}()
	for i := 0; i <= clones; i++ {
		name := fmt.Sprintf("restored %d of %d", i, clones)
		if i == 0 {
			name = "cold boot"
		}
		vm, err := mgr.Acquire(ctx, e, i == 0)
		if err != nil {
			return err
		}
		rows = append(rows, row{name, vm})
		if _, err := vm.Agent.Exec(ctx, agentproto.ExecRequest{Argv: append(append([]string{}, e.Run...), e.Test.Args...), Dir: "/tmp/box",
			Files: []agentproto.File{{Path: e.File, Content: []byte(e.Test.Code)}}}, nil, nil); err != nil {
			return err
		}
	}
	fmt.Printf("\nMemory per VM, all alive together (QEMU process, %d MiB guest; private includes TCG's translation cache):\n", mgr.Config().MemoryMiB)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "VM\tRSS\tPSS\tprivate\tshared\t")
	for _, r := range rows {
		m := smaps(r.vm.Machine.PID())
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", r.name, kib(m["Rss"]), kib(m["Pss"]),
			kib(m["Private_Clean"]+m["Private_Dirty"]), kib(m["Shared_Clean"]+m["Shared_Dirty"]))
	}
	return tw.Flush()
}

func kib(k int64) string { return fmt.Sprintf("%.0f MiB", float64(k)/1024) }

// smaps reads /proc/PID/smaps_rollup (values in KiB).
func smaps(pid int) map[string]int64 {
	out := map[string]int64{}
	if pid <= 0 {
		return out
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) > 0 {
			n, _ := strconv.ParseInt(fs[0], 10, 64)
			out[k] = n
		}
	}
	return out
}
