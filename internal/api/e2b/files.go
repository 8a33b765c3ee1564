package e2b

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/sandbox"
	"github.com/firesandbox/firesandbox/internal/state"
)

// maxTransfer is the default bound of one upload or download.
const maxTransfer = agentproto.MaxTransfer

// User names as E2B's SDKs send them.
const (
	// e2bUser is E2B's default user; firesandbox's guest user (uid 1000)
	// plays it.
	e2bUser  = "user"
	rootUser = "root"
)

// userOf is the user a data-plane call names, in envd's Basic
// authorization ("user:" base64-encoded) or the files' username query
// parameter; "" for the default.
func userOf(r *http.Request) (string, error) {
	u := r.URL.Query().Get("username")
	if a := r.Header.Get("Authorization"); u == "" && len(a) > 6 && strings.EqualFold(a[:6], "basic ") {
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(a[6:]))
		if err != nil {
			return "", badRequest("authorization: not base64")
		}
		u, _, _ = strings.Cut(string(b), ":")
	}
	if u == e2bUser {
		u = ""
	}
	if err := agentproto.ValidateUser(u); err != nil {
		return "", badRequest("user: %v", err)
	}
	return u, nil
}

// e2bHomes are the languages whose images give E2B's user its own home
// (the code-interpreter template: what Sandbox.create() gets); others keep
// firesandbox's work directory.
var e2bHomes = map[string]string{"code-interpreter": "/home/user"}

// homeOf is the E2B home and default working directory of a sandbox's
// default user.
func homeOf(sb state.Sandbox) string {
	if h, ok := e2bHomes[sb.Language]; ok {
		return h
	}
	return sandbox.WorkDir
}

// guestPath resolves a path the SDK sent: absolute, or relative to the
// user's home.
func guestPath(sb state.Sandbox, p string) (string, error) {
	if p == "" {
		return "", badRequest("path is required")
	}
	if strings.IndexByte(p, 0) >= 0 || len(p) > agentproto.MaxPathBytes {
		return "", badRequest("path: NUL byte or over %d bytes", agentproto.MaxPathBytes)
	}
	if !path.IsAbs(p) {
		p = path.Join(homeOf(sb), p)
	}
	return path.Clean(p), nil
}

// entryOut is envd's upload answer for one file.
type entryOut struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

// upload is envd's POST /files: multipart (one part per file, its file
// name the path) or octet-stream (the path in the query), gzip allowed.
// Each file streams to the agent, created with its parents by the user.
func (h *Handler) upload(w http.ResponseWriter, r *http.Request) {
	t := targetOf(r.Context())
	opts, err := fileOpts(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	body := io.Reader(r.Body)
	if strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			h.fail(w, r, badRequest("gzip body: %v", err))
			return
		}
		defer zr.Close()
		body = zr
	}
	out := []entryOut{}
	put := func(p string, rd io.Reader) error {
		lim := &limitedReader{r: rd, n: h.cfg.MaxUpload}
		return h.deps.Sandboxes.WithAgent(r.Context(), t.sb.Tenant, t.sb.ID, func(ctx context.Context, _ state.Sandbox, a *agentproto.Client) error {
			fi, err := a.Upload(ctx, p, lim, -1, 0o644, opts...)
			if lim.over {
				return fmt.Errorf("%w: %s is over %d bytes", errTooLarge, p, h.cfg.MaxUpload)
			}
			if err != nil {
				return err
			}
			out = append(out, entryOut{Path: fi.Path, Name: path.Base(fi.Path), Type: "file"})
			return nil
		})
	}
	query := r.URL.Query().Get("path")
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "multipart/form-data" {
		if query == "" {
			h.fail(w, r, badRequest("an octet-stream upload needs ?path="))
			return
		}
		p, err := guestPath(t.sb, query)
		if err == nil {
			err = put(p, body)
		}
		if err != nil {
			h.fail(w, r, h.fileError(err))
			return
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	if params["boundary"] == "" {
		h.fail(w, r, badRequest("multipart upload without a boundary"))
		return
	}
	mr := multipart.NewReader(body, params["boundary"])
	for n := 0; ; n++ {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			h.fail(w, r, badRequest("multipart upload: %v", err))
			return
		}
		if part.FormName() != "file" {
			part.Close()
			continue
		}
		if n >= agentproto.MaxFiles {
			h.fail(w, r, badRequest("more than %d files in one upload", agentproto.MaxFiles))
			return
		}
		// Not part.FileName(): it keeps only the base name, and E2B's
		// SDKs send the whole path there.
		_, disp, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
		name := disp["filename"]
		if query != "" && (name == "" || name == "blob") {
			name = query
		}
		p, err := guestPath(t.sb, name)
		if err == nil {
			err = put(p, part)
		}
		part.Close()
		if err != nil {
			h.fail(w, r, h.fileError(err))
			return
		}
	}
	if len(out) == 0 {
		h.fail(w, r, badRequest("a multipart upload needs a part named \"file\""))
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// fileOpts are a /files call's agent options: its user.
func fileOpts(r *http.Request) ([]agentproto.FileOption, error) {
	user, err := userOf(r)
	if err != nil || user == "" {
		return nil, err
	}
	return []agentproto.FileOption{agentproto.AsUser(user)}, nil
}

// limitedReader reads at most n bytes and notes an attempt to read more.
type limitedReader struct {
	r    io.Reader
	n    int64
	over bool
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		var one [1]byte
		if k, _ := l.r.Read(one[:]); k > 0 {
			l.over = true
			return 0, errTooLarge
		}
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	k, err := l.r.Read(p)
	l.n -= int64(k)
	return k, err
}

// download is envd's GET /files: the file streams from the agent.
func (h *Handler) download(w http.ResponseWriter, r *http.Request) {
	t := targetOf(r.Context())
	opts, err := fileOpts(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	p, err := guestPath(t.sb, r.URL.Query().Get("path"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	sw := &startWriter{w: w, name: path.Base(p)}
	err = h.deps.Sandboxes.WithAgent(r.Context(), t.sb.Tenant, t.sb.ID, func(ctx context.Context, _ state.Sandbox, a *agentproto.Client) error {
		_, err := a.Download(ctx, p, sw, h.cfg.MaxUpload, opts...)
		return err
	})
	switch {
	case err != nil && !sw.started:
		h.fail(w, r, h.fileError(err))
	case err != nil: // mid-body: all that is left is to cut the response
		panic(http.ErrAbortHandler)
	case !sw.started: // an empty file
		sw.start()
	}
}

// startWriter sends the download's headers with its first bytes, so an
// error before them can still be an error status.
type startWriter struct {
	w       http.ResponseWriter
	name    string
	started bool
}

func (s *startWriter) start() {
	s.started = true
	s.w.Header().Set("Content-Type", "application/octet-stream")
	s.w.Header().Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": s.name}))
	s.w.WriteHeader(http.StatusOK)
}

func (s *startWriter) Write(b []byte) (int, error) {
	if !s.started {
		s.start()
	}
	return s.w.Write(b)
}

// errTooLarge: an upload over the bound (507 is envd's "no space").
var errTooLarge = errors.New("too large")

// fileError gives the agent's file errors envd's statuses: the SDK turns
// 404 into FileNotFoundError, 400 into InvalidArgumentError.
func (h *Handler) fileError(err error) error {
	var ae *agentproto.AgentError
	if errors.As(err, &ae) {
		switch ae.Code {
		case agentproto.CodeNotFound:
			return fmt.Errorf("%w: %s", errNotFound, ae.Message)
		case agentproto.CodeInvalid, agentproto.CodeExists:
			return badRequest("%s", ae.Message)
		case agentproto.CodePermission:
			return fmt.Errorf("%w: %s", errUnauthorized, ae.Message)
		case agentproto.CodeTooLarge:
			return fmt.Errorf("%w: %s", errTooLarge, ae.Message)
		}
	}
	if errors.Is(err, agentproto.ErrMalformed) {
		return badRequest("%v", err)
	}
	return err
}

// signatureOK checks a file URL's signature: "v1_" and the unpadded
// base64 SHA-256 of path:operation:user:token[:expiration], as the SDKs
// make it from the sandbox's access token.
func (h *Handler) signatureOK(r *http.Request, sb state.Sandbox) bool {
	q := r.URL.Query()
	op := "read"
	if r.Method == http.MethodPost {
		op = "write"
	}
	raw := q.Get("path") + ":" + op + ":" + q.Get("username") + ":" + h.tok.make(kindEnvd, sb.ID, sb.Tenant)
	if exp := q.Get("signature_expiration"); exp != "" {
		n, err := strconv.ParseInt(exp, 10, 64)
		if err != nil || time.Now().Unix() > n {
			return false
		}
		raw += ":" + exp
	}
	sum := sha256.Sum256([]byte(raw))
	want := "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
	return subtle.ConstantTimeCompare([]byte(q.Get("signature")), []byte(want)) == 1
}
