package api

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/firesandbox/firesandbox/internal/state"
)

// The exposition is written by hand: a few counters and histograms with
// low-cardinality labels do not need prometheus/client_golang and its
// dependency tree (protobuf, its own registry globals), and the text
// format (version 0.0.4) is small and stable.

// durationBuckets suit both HTTP requests and runs: a restored run takes
// tens of milliseconds under KVM and seconds under TCG.
var durationBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}

type histogram struct {
	counts []uint64 // per bucket, not cumulative
	sum    float64
	n      uint64
}

func (h *histogram) observe(v float64) {
	if h.counts == nil {
		h.counts = make([]uint64, len(durationBuckets))
	}
	h.n++
	h.sum += v
	if i, _ := slices.BinarySearch(durationBuckets, v); i < len(durationBuckets) {
		h.counts[i]++
	}
}

type metrics struct {
	mu       sync.Mutex
	httpReqs map[[2]string]uint64     // route, code
	httpDur  map[string]*histogram    // route
	runs     map[[3]string]uint64     // api, language, status
	runDur   map[[2]string]*histogram // api, language
	running  atomic.Int64             // runs holding a VM now
}

func newMetrics() *metrics {
	return &metrics{
		httpReqs: map[[2]string]uint64{}, httpDur: map[string]*histogram{},
		runs: map[[3]string]uint64{}, runDur: map[[2]string]*histogram{},
	}
}

func (m *metrics) observeHTTP(route string, code int, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.httpReqs[[2]string{route, strconv.Itoa(code)}]++
	h := m.httpDur[route]
	if h == nil {
		h = &histogram{}
		m.httpDur[route] = h
	}
	h.observe(d.Seconds())
}

// observeRun counts a finished run; status is the Piston status, "OK",
// or "error" when no result came back.
func (m *metrics) observeRun(api, language, status string, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.runs[[3]string{api, language, status}]++
	k := [2]string{api, language}
	h := m.runDur[k]
	if h == nil {
		h = &histogram{}
		m.runDur[k] = h
	}
	h.observe(d.Seconds())
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	bw := bufio.NewWriter(w)
	s.writeMetrics(r, bw)
	_ = bw.Flush()
}

func (s *Server) writeMetrics(r *http.Request, w io.Writer) {
	p := func(f string, a ...any) { fmt.Fprintf(w, f, a...) }
	header := func(name, typ, help string) { p("# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ) }

	m := s.met
	m.mu.Lock()
	header("firesandbox_http_requests_total", "counter", "HTTP requests by route and status code.")
	for _, k := range sortedKeys(m.httpReqs, func(k [2]string) string { return k[0] + "\x00" + k[1] }) {
		p("firesandbox_http_requests_total{route=%s,code=%s} %d\n", quote(k[0]), quote(k[1]), m.httpReqs[k])
	}
	header("firesandbox_http_request_duration_seconds", "histogram", "HTTP request latency by route.")
	for _, k := range sortedKeys(m.httpDur, func(k string) string { return k }) {
		writeHistogram(w, "firesandbox_http_request_duration_seconds", "route="+quote(k), m.httpDur[k])
	}
	header("firesandbox_runs_total", "counter", "One-shot runs by API, language and status (OK, RE, SG, TO, OL, EL, XX, error).")
	for _, k := range sortedKeys(m.runs, func(k [3]string) string { return strings.Join(k[:], "\x00") }) {
		p("firesandbox_runs_total{api=%s,language=%s,status=%s} %d\n", quote(k[0]), quote(k[1]), quote(k[2]), m.runs[k])
	}
	header("firesandbox_run_duration_seconds", "histogram", "One-shot run latency, VM acquisition included.")
	for _, k := range sortedKeys(m.runDur, func(k [2]string) string { return k[0] + "\x00" + k[1] }) {
		writeHistogram(w, "firesandbox_run_duration_seconds", "api="+quote(k[0])+",language="+quote(k[1]), m.runDur[k])
	}
	m.mu.Unlock()

	ls := s.lim.Stats()
	header("firesandbox_vm_slots", "gauge", "VM slots (--max-vms).")
	p("firesandbox_vm_slots %d\n", ls.Max)
	header("firesandbox_vm_slots_in_use", "gauge", "VM slots held by runs and live sandboxes.")
	p("firesandbox_vm_slots_in_use %d\n", ls.InUse)
	header("firesandbox_queue_waiting", "gauge", "Requests waiting for a VM slot.")
	p("firesandbox_queue_waiting %d\n", ls.Waiting)
	header("firesandbox_queue_rejected_total", "counter", "Requests refused for want of a VM slot.")
	p("firesandbox_queue_rejected_total{reason=\"queue_full\"} %d\n", ls.RefusedFull)
	p("firesandbox_queue_rejected_total{reason=\"wait_timeout\"} %d\n", ls.RefusedTimeout)

	pools := s.mgr.PoolStats()
	langs := sortedKeys(pools, func(k string) string { return k })
	header("firesandbox_pool_size", "gauge", "Warm pool target size by language.")
	for _, l := range langs {
		p("firesandbox_pool_size{language=%s} %d\n", quote(l), pools[l].Size)
	}
	header("firesandbox_pool_ready", "gauge", "Restored VMs waiting in the warm pool.")
	readyVMs := 0
	for _, l := range langs {
		p("firesandbox_pool_ready{language=%s} %d\n", quote(l), pools[l].Ready)
		readyVMs += pools[l].Ready
	}
	header("firesandbox_pool_gets_total", "counter", "Pool takes by result.")
	for _, l := range langs {
		p("firesandbox_pool_gets_total{language=%s,result=\"hit\"} %d\n", quote(l), pools[l].Hits)
		p("firesandbox_pool_gets_total{language=%s,result=\"miss\"} %d\n", quote(l), pools[l].Misses)
	}

	live := s.sbx.Live()
	running := int(m.running.Load())
	header("firesandbox_vms_alive", "gauge", "VMs alive in this process: one-shot runs, live sandboxes and warm pool VMs.")
	p("firesandbox_vms_alive{kind=\"run\"} %d\n", running)
	p("firesandbox_vms_alive{kind=\"sandbox\"} %d\n", live)
	p("firesandbox_vms_alive{kind=\"pool\"} %d\n", readyVMs)

	if counts, err := s.sbx.Counts(r.Context()); err == nil {
		header("firesandbox_sandboxes", "gauge", "Sandboxes by state.")
		for _, st := range []state.State{state.Creating, state.Running, state.Hibernating, state.Hibernated, state.Resuming, state.Lost} {
			p("firesandbox_sandboxes{state=%s} %d\n", quote(string(st)), counts[st])
		}
	}
}

func writeHistogram(w io.Writer, name, labels string, h *histogram) {
	var cum uint64
	for i, b := range durationBuckets {
		if h.counts != nil {
			cum += h.counts[i]
		}
		fmt.Fprintf(w, "%s_bucket{%s,le=%q} %d\n", name, labels, strconv.FormatFloat(b, 'g', -1, 64), cum)
	}
	fmt.Fprintf(w, "%s_bucket{%s,le=\"+Inf\"} %d\n", name, labels, h.n)
	fmt.Fprintf(w, "%s_sum{%s} %g\n", name, labels, h.sum)
	fmt.Fprintf(w, "%s_count{%s} %d\n", name, labels, h.n)
}

// quote escapes a label value as the text format wants.
func quote(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(v) + `"`
}

func sortedKeys[K comparable, V any](m map[K]V, str func(K) string) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b K) int { return strings.Compare(str(a), str(b)) })
	return keys
}
