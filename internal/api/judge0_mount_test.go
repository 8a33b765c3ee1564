package api

import (
	"strings"
	"testing"
	"time"
)

// TestJudge0Mounted reaches the Judge0 API through the server: at the
// root and under /judge0, behind the API key sent as Judge0's
// X-Auth-Token, with only the installed languages, and a submission that
// fails for want of a kernel ending as Internal Error instead of hanging.
func TestJudge0Mounted(t *testing.T) {
	_, hs := newTestServer(t, Config{APIKey: "s3cret"})
	if r := do(t, hs, "GET", "/languages", "", ""); r.status != 401 {
		t.Fatalf("no key: %d %s", r.status, r.raw)
	}
	for _, p := range []string{"/languages", "/judge0/languages"} {
		r := do(t, hs, "GET", p, "", "", "X-Auth-Token", "s3cret")
		if r.status != 200 || !strings.Contains(r.raw, `{"id":71,"name":"Python (3.11.2)"}`) || strings.Contains(r.raw, `"C (GCC`) {
			t.Fatalf("%s: %d %s", p, r.status, r.raw)
		}
	}
	r := do(t, hs, "POST", "/judge0/submissions", "application/json", `{"source_code":"print(1)","language_id":50}`, "X-Auth-Token", "s3cret")
	if r.status != 422 || r.raw != `{"language_id":["language with id 50 doesn't exist"]}` {
		t.Fatalf("uninstalled language: %d %s", r.status, r.raw)
	}
	r = do(t, hs, "POST", "/submissions", "application/json", `{"source_code":"print(1)","language_id":71}`, "X-Auth-Token", "s3cret")
	tok, _ := r.body["token"].(string)
	if r.status != 201 || tok == "" {
		t.Fatalf("create: %d %s", r.status, r.raw)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r = do(t, hs, "GET", "/judge0/submissions/"+tok+"?fields=status_id,message", "", "", "X-Auth-Token", "s3cret")
		if id, _ := r.body["status_id"].(float64); id == 13 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %s", r.raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if msg, _ := r.body["message"].(string); msg == "" {
		t.Fatalf("internal error without a message: %s", r.raw)
	}
}
