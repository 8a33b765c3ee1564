package judge0

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/firesandbox/firesandbox/internal/state"
)

// ---- HTTP: submissions ----

// prelude does what Judge0 checks before it reads a submission, in its
// order: wait allowed, queue room, fields. It returns false when it has
// answered.
func (h *Handler) prelude(w http.ResponseWriter, r *http.Request, p params, n int, checkWait, checkFields bool) (fields []string, ok bool) {
	if checkWait && p.flag("wait") && h.cfg.DisableWait {
		writeError(w, http.StatusBadRequest, "wait not allowed")
		return nil, false
	}
	if n > 0 {
		queued, _, err := h.deps.Store.Counts(r.Context())
		if err != nil {
			h.writeFailure(w, r, err)
			return nil, false
		}
		if queued+n > h.cfg.MaxQueueSize {
			writeError(w, http.StatusServiceUnavailable, "queue is full")
			return nil, false
		}
	}
	if checkFields {
		raw, _ := p.scalar("fields")
		f, invalid := parseFields(raw)
		if len(invalid) > 0 {
			writeError(w, http.StatusBadRequest, invalidFieldsMessage(invalid))
			return nil, false
		}
		fields = f
	}
	return fields, true
}

func (h *Handler) params(w http.ResponseWriter, r *http.Request) (params, bool) {
	p, err := readParams(r)
	if err != nil {
		status := http.StatusBadRequest
		if strings.HasPrefix(err.Error(), "request body is larger") {
			status = http.StatusRequestEntityTooLarge
		}
		writeError(w, status, err.Error())
		return nil, false
	}
	return p, true
}

func (h *Handler) newSubmission(tenant string, in input) (state.Submission, error) {
	req, err := json.Marshal(in)
	if err != nil {
		return state.Submission{}, fmt.Errorf("encode submission: %w", err)
	}
	return state.Submission{Token: uuid.NewString(), Tenant: tenant, Status: StatusInQueue, Request: req,
		CreatedAt: h.deps.Now()}, nil
}

// enqueue stores subs; false when it has answered (queue full, failure).
func (h *Handler) enqueue(w http.ResponseWriter, r *http.Request, subs ...state.Submission) bool {
	err := h.deps.Store.Enqueue(r.Context(), h.cfg.MaxQueueSize, subs...)
	switch {
	case errors.Is(err, state.ErrSubmissionQueueFull):
		writeError(w, http.StatusServiceUnavailable, "queue is full")
		return false
	case err != nil:
		h.writeFailure(w, r, err)
		return false
	}
	h.wakeWorkers()
	return true
}

func (h *Handler) handleCreate(w http.ResponseWriter, r *http.Request) {
	p, ok := h.params(w, r)
	if !ok {
		return
	}
	fields, ok := h.prelude(w, r, p, 1, true, true)
	if !ok {
		return
	}
	b64, wait, tenant := p.flag("base64_encoded"), p.flag("wait"), tenantOf(r)
	in, errs := h.parseSubmission(p, b64, tenant)
	if errs != nil {
		writeJSON(w, http.StatusUnprocessableEntity, errs.object())
		return
	}
	sub, err := h.newSubmission(tenant, in)
	if err != nil {
		h.writeFailure(w, r, err)
		return
	}
	var done <-chan struct{}
	if wait {
		done = h.waitFor(sub.Token)
		defer h.stopWaiting(sub.Token)
	}
	if !h.enqueue(w, r, sub) {
		return
	}
	if !wait {
		writeJSON(w, http.StatusCreated, object{{"token", sub.Token}})
		return
	}
	t := time.NewTimer(h.cfg.WaitTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C: // answer with the submission as it is now
	case <-h.base.Done():
	case <-r.Context().Done():
		return
	}
	v, err := h.load(r.Context(), tenant, sub.Token)
	if err != nil {
		h.writeFailure(w, r, err)
		return
	}
	o, err := h.render(v, fields, b64)
	if errors.Is(err, errNotUTF8) {
		writeJSON(w, http.StatusCreated, object{{"token", sub.Token}, {"error", utf8Message}})
		return
	}
	writeJSON(w, http.StatusCreated, o)
}

const (
	utf8Message     = "some attributes for this submission cannot be converted to UTF-8, use base64_encoded=true query parameter"
	utf8ManyMessage = "some attributes for one or more submissions cannot be converted to UTF-8, use base64_encoded=true query parameter"
)

func (h *Handler) load(ctx context.Context, tenant, token string) (*view, error) {
	sub, err := h.deps.Store.Get(ctx, tenant, token)
	if err != nil {
		return nil, err
	}
	return decodeView(sub)
}

func (h *Handler) handleShow(w http.ResponseWriter, r *http.Request) {
	p, ok := h.params(w, r)
	if !ok {
		return
	}
	fields, ok := h.prelude(w, r, p, 0, false, true)
	if !ok {
		return
	}
	v, err := h.load(r.Context(), tenantOf(r), r.PathValue("token"))
	switch {
	case errors.Is(err, state.ErrNoSubmission):
		writeNotFound(w)
		return
	case err != nil:
		h.writeFailure(w, r, err)
		return
	}
	o, err := h.render(v, fields, p.flag("base64_encoded"))
	if err != nil {
		writeError(w, http.StatusBadRequest, utf8Message)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

func (h *Handler) handleDelete(w http.ResponseWriter, r *http.Request) {
	p, ok := h.params(w, r)
	if !ok {
		return
	}
	fields, ok := h.prelude(w, r, p, 0, false, true)
	if !ok {
		return
	}
	if h.cfg.DisableDelete {
		writeError(w, http.StatusBadRequest, "delete not allowed")
		return
	}
	sub, err := h.deps.Store.Delete(r.Context(), tenantOf(r), r.PathValue("token"))
	switch {
	case errors.Is(err, state.ErrNoSubmission):
		writeNotFound(w)
		return
	case errors.Is(err, state.ErrSubmissionActive):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("submission cannot be deleted because its status is %d (%s)", sub.Status, statusName(sub.Status)))
		return
	case err != nil:
		h.writeFailure(w, r, err)
		return
	}
	v, err := decodeView(sub)
	if err != nil {
		h.writeFailure(w, r, err)
		return
	}
	o, err := h.render(v, fields, true) // as Judge0: always base64, so nothing is lost
	if err != nil {
		h.writeFailure(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

// batch is POST /submissions/batch's body.
type batch struct {
	Submissions []json.RawMessage `json:"submissions"`
}

func (h *Handler) batchSize(w http.ResponseWriter, n int) bool {
	switch {
	case n > h.cfg.MaxBatchSize:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("number of submissions in a batch should be less than or equal to %d", h.cfg.MaxBatchSize))
		return false
	case n == 0:
		writeError(w, http.StatusBadRequest, "there should be at least one submission in a batch")
		return false
	}
	return true
}

func (h *Handler) handleBatchCreate(w http.ResponseWriter, r *http.Request) {
	p, ok := h.params(w, r)
	if !ok {
		return
	}
	var items []json.RawMessage
	if raw := bytes.TrimSpace(p["submissions"]); len(raw) > 0 && raw[0] == '[' {
		if err := json.Unmarshal(raw, &items); err != nil {
			writeError(w, http.StatusBadRequest, "malformed JSON body: "+err.Error())
			return
		}
	}
	if _, ok := h.prelude(w, r, p, len(items), false, false); !ok { // fields are ignored here, as in Judge0
		return
	}
	if !h.batchSize(w, len(items)) {
		return
	}
	b64, tenant := p.flag("base64_encoded"), tenantOf(r)
	out := make([]any, len(items))
	var subs []state.Submission
	for i, raw := range items {
		var sp params
		if err := json.Unmarshal(raw, &sp); err != nil || sp == nil {
			sp = params{}
		}
		in, errs := h.parseSubmission(sp, b64, tenant)
		if errs != nil {
			out[i] = errs.object()
			continue
		}
		sub, err := h.newSubmission(tenant, in)
		if err != nil {
			h.writeFailure(w, r, err)
			return
		}
		subs = append(subs, sub)
		out[i] = object{{"token", sub.Token}}
	}
	if len(subs) == 0 {
		writeJSON(w, http.StatusUnprocessableEntity, out)
		return
	}
	if !h.enqueue(w, r, subs...) {
		return
	}
	writeJSON(w, http.StatusCreated, out)
}

func (h *Handler) handleBatchShow(w http.ResponseWriter, r *http.Request) {
	p, ok := h.params(w, r)
	if !ok {
		return
	}
	raw := r.Header.Get("tokens")
	if raw == "" {
		raw, _ = p.scalar("tokens")
	}
	var tokens []string
	for _, t := range strings.Split(strings.TrimSpace(raw), ",") {
		if t != "" {
			tokens = append(tokens, t)
		}
	}
	fields, ok := h.prelude(w, r, p, 0, false, true)
	if !ok {
		return
	}
	if !h.batchSize(w, len(tokens)) {
		return
	}
	found, err := h.deps.Store.GetMany(r.Context(), tenantOf(r), tokens)
	if err != nil {
		h.writeFailure(w, r, err)
		return
	}
	b64 := p.flag("base64_encoded")
	out := make([]any, len(tokens))
	for i, t := range tokens {
		sub, ok := found[t]
		if !ok {
			continue // null, as Judge0 answers an unknown token
		}
		v, err := decodeView(sub)
		if err != nil {
			h.writeFailure(w, r, err)
			return
		}
		o, err := h.render(v, fields, b64)
		if err != nil {
			writeError(w, http.StatusBadRequest, utf8ManyMessage)
			return
		}
		out[i] = o
	}
	writeJSON(w, http.StatusOK, object{{"submissions", out}})
}

// maxPerPage bounds GET /submissions pages.
const maxPerPage = 100

func (h *Handler) handleIndex(w http.ResponseWriter, r *http.Request) {
	p, ok := h.params(w, r)
	if !ok {
		return
	}
	fields, ok := h.prelude(w, r, p, 0, false, true)
	if !ok {
		return
	}
	page, perPage := 1, 20
	if s, ok := p.scalar("page"); ok {
		page = rubyToI(s)
	}
	if s, ok := p.scalar("per_page"); ok {
		perPage = rubyToI(s)
	}
	switch {
	case page <= 0:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid page: %d", page))
		return
	case perPage < 0:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid per_page: %d", perPage))
		return
	case perPage == 0:
		perPage = 20
	case perPage > maxPerPage:
		perPage = maxPerPage
	}
	subs, total, err := h.deps.Store.List(r.Context(), tenantOf(r), (page-1)*perPage, perPage)
	if err != nil {
		h.writeFailure(w, r, err)
		return
	}
	b64 := p.flag("base64_encoded")
	out := make([]any, 0, len(subs))
	for _, sub := range subs {
		v, err := decodeView(sub)
		if err != nil {
			h.writeFailure(w, r, err)
			return
		}
		o, err := h.render(v, fields, b64)
		if err != nil {
			writeError(w, http.StatusBadRequest, utf8ManyMessage)
			return
		}
		out = append(out, o)
	}
	pages := (total + perPage - 1) / perPage
	var next, prev any
	if page < pages {
		next = page + 1
	}
	if page > 1 {
		prev = page - 1
	}
	writeJSON(w, http.StatusOK, object{{"submissions", out}, {"meta", object{{"current_page", page}, {"next_page", next},
		{"prev_page", prev}, {"total_pages", pages}, {"total_count", total}}}})
}

// ---- the queue ----

// waitFor registers interest in a submission's end; the channel closes
// when it finishes here.
func (h *Handler) waitFor(token string) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch := make(chan struct{})
	h.waiters[token] = ch
	return ch
}

func (h *Handler) stopWaiting(token string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.waiters, token)
}

func (h *Handler) finished(token string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch, ok := h.waiters[token]; ok {
		close(ch)
		delete(h.waiters, token)
	}
}

func (h *Handler) wakeWorkers() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// pollInterval is how often an idle worker looks at the queue without
// being woken (a safety net; enqueues wake it at once), and pruneInterval
// how often finished submissions past the retention are deleted.
const (
	pollInterval  = 5 * time.Second
	pruneInterval = time.Hour
)

// worker takes queued submissions one at a time, each holding a slot of
// the gate, until the Handler closes. The first worker also prunes.
func (h *Handler) worker(first bool) {
	defer h.wg.Done()
	poll := time.NewTicker(pollInterval)
	defer poll.Stop()
	var pruneC <-chan time.Time
	if first {
		h.prune()
		prune := time.NewTicker(pruneInterval)
		defer prune.Stop()
		pruneC = prune.C
	}
	for {
		select {
		case <-h.base.Done():
			return
		case <-h.wake:
		case <-poll.C:
		case <-pruneC:
			h.prune()
			continue
		}
		for h.base.Err() == nil && h.runOne() {
		}
	}
}

func (h *Handler) prune() {
	if h.cfg.Retention < 0 {
		return
	}
	if n, err := h.deps.Store.Prune(h.base, h.deps.Now().Add(-h.cfg.Retention)); err != nil {
		h.log.Warn("prune submissions", "op", "prune", "err", err)
	} else if n > 0 {
		h.log.Info("pruned finished submissions", "op", "prune", "count", n)
	}
}

// runOne runs the oldest queued submission, if any; it says whether it
// found one.
func (h *Handler) runOne() bool {
	ctx := h.base
	if queued, _, err := h.deps.Store.Counts(ctx); err != nil || queued == 0 {
		if err != nil && ctx.Err() == nil {
			h.log.Error("count submissions", "op", "queue", "err", err)
		}
		return false
	}
	release := func() {}
	if h.deps.Gate != nil {
		rel, err := h.deps.Gate.Acquire(ctx)
		if err != nil { // the gate is busy: try again at the next wake or poll
			if ctx.Err() == nil {
				h.log.Debug("no VM slot for a submission yet", "op", "queue", "err", err)
			}
			return false
		}
		release = rel
	}
	defer release()
	sub, ok, err := h.deps.Store.Claim(ctx, StatusProcessing)
	if err != nil || !ok {
		if err != nil && ctx.Err() == nil {
			h.log.Error("claim submission", "op", "queue", "err", err)
		}
		return false
	}
	h.wakeWorkers() // another idle worker may take the next one
	h.mu.Lock()
	h.running++
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.running--
		h.mu.Unlock()
	}()

	log := h.log.With("submission", sub.Token, "op", "run")
	status, res := StatusInternalError, result{}
	v, err := decodeView(sub)
	if err != nil {
		res.Message = []byte(err.Error())
	} else {
		status, res, err = h.execute(ctx, &v.in, sub.Tenant)
		if errors.Is(err, errClosed) {
			log.Info("stopped while running: it runs again at the next start")
			return false
		}
	}
	body, err := json.Marshal(res)
	if err == nil {
		err = h.deps.Store.Finish(context.WithoutCancel(ctx), sub.Token, status, body)
	}
	if err != nil {
		log.Error("record submission result", "err", err)
		return true
	}
	log.Debug("submission finished", "status", status)
	h.finished(sub.Token)
	if v != nil && v.in.CallbackURL != nil && *v.in.CallbackURL != "" {
		h.wg.Add(1)
		go h.callback(sub.Tenant, sub.Token, *v.in.CallbackURL)
	}
	return true
}

// callback PUTs the finished submission (default fields, base64) to the
// client's URL, as Judge0 does, trying a few times.
func (h *Handler) callback(tenant, token, raw string) {
	defer h.wg.Done()
	log := h.log.With("submission", token, "op", "callback")
	u, err := url.Parse(raw)
	if err != nil || !h.deps.CallbackAllowed(u.Hostname()) { // the policy may have changed since
		log.Warn("callback refused by policy", "url", raw)
		return
	}
	v, err := h.load(h.base, tenant, token)
	if err != nil {
		log.Warn("callback: load submission", "err", err)
		return
	}
	o, err := h.render(v, defaultFields, true)
	if err != nil {
		log.Warn("callback: render", "err", err)
		return
	}
	body, _ := json.Marshal(o)
	for try := 1; try <= h.cfg.CallbacksMaxTries; try++ {
		ctx, cancel := context.WithTimeout(h.base, h.cfg.CallbacksTimeout)
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, raw, bytes.NewReader(body))
		if err != nil {
			cancel()
			log.Warn("callback: bad URL", "err", err)
			return
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := h.deps.HTTPClient.Do(req)
		if err == nil {
			resp.Body.Close()
			cancel()
			log.Debug("callback sent", "status", resp.StatusCode, "try", try)
			return // Judge0 stops at any answer
		}
		cancel()
		if h.base.Err() != nil {
			return
		}
		log.Info("callback failed", "try", try, "err", err)
	}
}

// ---- info endpoints that read the queue ----

func (h *Handler) handleWorkers(w http.ResponseWriter, r *http.Request) {
	queued, _, err := h.deps.Store.Counts(r.Context())
	if err != nil {
		h.writeFailure(w, r, err)
		return
	}
	h.mu.Lock()
	working := h.running
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, []object{{{"queue", h.cfg.Version}, {"size", queued}, {"available", h.cfg.Workers},
		{"idle", h.cfg.Workers - working}, {"working", working}, {"paused", 0}, {"failed", 0}}})
}
