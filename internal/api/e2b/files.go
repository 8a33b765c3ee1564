package e2b

import (
	"compress/gzip"
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
const maxTransfer = agentproto.MaxFileTransfer

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
	if !validUser(u) {
		return "", badRequest("user %q: want a user name", u)
	}
	return u, nil
}

// validUser accepts "" or a name of the kind useradd accepts.
func validUser(u string) bool {
	if len(u) > 32 {
		return false
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if !('a' <= c && c <= 'z' || c == '_' || i > 0 && ('0' <= c && c <= '9' || c == '-')) {
			return false
		}
	}
	return true
}

// homeOf is the E2B home and default working directory of a sandbox's
// default user.
func homeOf(state.Sandbox) string { return sandbox.WorkDir }

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

// homeRel is p relative to the home: the sandboxes' file transfers work
// below it.
func homeRel(sb state.Sandbox, abs string) (string, error) {
	home := homeOf(sb)
	if !strings.HasPrefix(abs, home+"/") {
		return "", fmt.Errorf("%w: file transfers outside %s (%s)", errUnsupported, home, abs)
	}
	return strings.TrimPrefix(abs, home+"/"), nil
}

// entryOut is envd's upload answer for one file.
type entryOut struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

// upload is envd's POST /files: multipart (one part per file, its file
// name the path) or octet-stream (the path in the query), gzip allowed.
func (h *Handler) upload(w http.ResponseWriter, r *http.Request) {
	t := targetOf(r.Context())
	files, err := h.readUpload(r, t.sb)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]entryOut, 0, len(files))
	rel := make([]agentproto.File, 0, len(files))
	for _, f := range files {
		p, err := homeRel(t.sb, f.Path)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		rel = append(rel, agentproto.File{Path: p, Content: f.Content, Mode: 0o644})
		out = append(out, entryOut{Path: f.Path, Name: path.Base(f.Path), Type: "file"})
	}
	if err := h.deps.Sandboxes.WriteFiles(r.Context(), t.sb.Tenant, t.sb.ID, rel); err != nil {
		h.fail(w, r, h.fileError(err))
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// readUpload reads an upload's files, with absolute paths, each within
// the size bound.
func (h *Handler) readUpload(r *http.Request, sb state.Sandbox) ([]agentproto.File, error) {
	if _, err := userOf(r); err != nil {
		return nil, err
	}
	body := io.Reader(r.Body)
	if strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return nil, badRequest("gzip body: %v", err)
		}
		defer zr.Close()
		body = zr
	}
	readAll := func(rd io.Reader, name string) ([]byte, error) {
		b, err := io.ReadAll(io.LimitReader(rd, h.cfg.MaxUpload+1))
		if err != nil {
			return nil, badRequest("read %s: %v", name, err)
		}
		if int64(len(b)) > h.cfg.MaxUpload {
			return nil, fmt.Errorf("%w: %s is over %d bytes", errTooLarge, name, h.cfg.MaxUpload)
		}
		return b, nil
	}
	query := r.URL.Query().Get("path")
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "multipart/form-data" {
		if query == "" {
			return nil, badRequest("an octet-stream upload needs ?path=")
		}
		p, err := guestPath(sb, query)
		if err != nil {
			return nil, err
		}
		b, err := readAll(body, p)
		if err != nil {
			return nil, err
		}
		return []agentproto.File{{Path: p, Content: b}}, nil
	}
	if params["boundary"] == "" {
		return nil, badRequest("multipart upload without a boundary")
	}
	mr := multipart.NewReader(body, params["boundary"])
	var files []agentproto.File
	total := int64(0)
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, badRequest("multipart upload: %v", err)
		}
		if part.FormName() != "file" {
			part.Close()
			continue
		}
		if len(files) == agentproto.MaxFiles {
			return nil, badRequest("more than %d files in one upload", agentproto.MaxFiles)
		}
		// Not part.FileName(): it keeps only the base name, and E2B's
		// SDKs send the whole path there.
		_, disp, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
		name := disp["filename"]
		if query != "" && (name == "" || name == "blob") {
			name = query
		}
		p, err := guestPath(sb, name)
		if err != nil {
			return nil, err
		}
		b, err := readAll(part, p)
		part.Close()
		if err != nil {
			return nil, err
		}
		if total += int64(len(b)); total > h.cfg.MaxUpload {
			return nil, fmt.Errorf("%w: the upload is over %d bytes", errTooLarge, h.cfg.MaxUpload)
		}
		files = append(files, agentproto.File{Path: p, Content: b})
	}
	if len(files) == 0 {
		return nil, badRequest("a multipart upload needs a part named \"file\"")
	}
	return files, nil
}

// download is envd's GET /files.
func (h *Handler) download(w http.ResponseWriter, r *http.Request) {
	t := targetOf(r.Context())
	if _, err := userOf(r); err != nil {
		h.fail(w, r, err)
		return
	}
	p, err := guestPath(t.sb, r.URL.Query().Get("path"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	rel, err := homeRel(t.sb, p)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	data, err := h.deps.Sandboxes.ReadFile(r.Context(), t.sb.Tenant, t.sb.ID, rel, h.cfg.MaxUpload)
	if err != nil {
		h.fail(w, r, h.fileError(err))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": path.Base(p)}))
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data)
}

// errTooLarge: an upload over the bound (507 is envd's "no space").
var errTooLarge = errors.New("too large")

// fileError gives the agent's file errors envd's statuses: the SDK turns
// 404 into FileNotFoundError.
func (h *Handler) fileError(err error) error {
	var ae *agentproto.AgentError
	if errors.As(err, &ae) && ae.Code == agentproto.CodeNotFound {
		return fmt.Errorf("%w: %s", errNotFound, ae.Message)
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
