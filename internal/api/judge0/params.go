package judge0

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode"
)

// params are a request's parameters as Rails merges them: the query
// string over the body (JSON, or a form). Values are raw JSON; query and
// form values are JSON strings.
type params map[string]json.RawMessage

// errBody is a body that is neither JSON nor a form.
type errBody struct{ msg string }

func (e *errBody) Error() string { return e.msg }

// readParams reads the body (bounded by ServeHTTP) and the query string.
func readParams(r *http.Request) (params, error) {
	p := params{}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &errBody{fmt.Sprintf("request body is larger than %d bytes", mbe.Limit)}
		}
		return nil, &errBody{"read request body: " + err.Error()}
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	trimmed := bytes.TrimSpace(body)
	switch {
	case len(trimmed) == 0:
	case ct == "application/x-www-form-urlencoded" && trimmed[0] != '{':
		vals, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, &errBody{"malformed form body: " + err.Error()}
		}
		addValues(p, vals)
	default: // JSON, whatever the Content-Type says
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(trimmed, &obj); err != nil {
			return nil, &errBody{"malformed JSON body: " + err.Error()}
		}
		for k, v := range obj {
			p[k] = v
		}
	}
	addValues(p, r.URL.Query())
	return p, nil
}

func addValues(p params, vals url.Values) {
	for k, vs := range vals {
		if len(vs) > 0 {
			b, _ := json.Marshal(vs[len(vs)-1])
			p[k] = b
		}
	}
}

// flag is a query parameter Judge0 compares with "true".
func (p params) flag(name string) bool {
	s, ok := p.scalar(name)
	return ok && s == "true"
}

// scalar returns a parameter as Rails sees a permitted scalar: a string
// as is, a number or boolean as its text. Null, absent, arrays and
// objects (which Rails does not permit) are not there.
func (p params) scalar(name string) (string, bool) {
	raw := bytes.TrimSpace(p[name])
	if len(raw) == 0 {
		return "", false
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return s, true
	case '[', '{', 'n':
		return "", false
	}
	return string(raw), true
}

// isString says whether a parameter is a JSON string (not a number
// written as text).
func (p params) isString(name string) bool {
	raw := bytes.TrimSpace(p[name])
	return len(raw) > 0 && raw[0] == '"'
}

// number casts a parameter as Rails validates numericality: absent, null
// and "" are nil; anything not a number is an error.
func (p params) number(name string) (v float64, isNil bool, ok bool) {
	s, present := p.scalar(name)
	if !present || (s == "" && p.isString(name)) {
		return 0, true, true
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false, false
	}
	return f, false, true
}

// boolean casts a parameter as Rails casts a boolean column: absent,
// null and "" are nil; false, 0, "0", "f", "false", "off" (any case) are
// false; anything else is true.
func (p params) boolean(name string) (v, isNil bool) {
	s, present := p.scalar(name)
	if !present || s == "" {
		return false, true
	}
	switch strings.ToLower(s) {
	case "false", "0", "f", "off":
		return false, false
	}
	return true, false
}

// text returns a text attribute's bytes, decoding base64 when asked;
// nil means null.
func (p params) text(name string, b64 bool) ([]byte, error) {
	s, ok := p.scalar(name)
	if !ok {
		return nil, nil
	}
	if !b64 {
		return []byte(s), nil
	}
	return decodeBase64(s)
}

// decodeBase64 decodes standard base64, ignoring line breaks and other
// white space (Ruby's encode64 wraps at 60 columns) and missing padding.
// Ruby's decode64 also skips any other character it does not know, which
// turns a client's mistake into garbage; this refuses it.
func decodeBase64(s string) ([]byte, error) {
	clean := strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) {
			return -1
		}
		return r
	}, s)
	clean = strings.TrimRight(clean, "=")
	b, err := base64.RawStdEncoding.DecodeString(clean)
	if err != nil {
		return nil, fmt.Errorf("is not valid base64")
	}
	return b, nil
}

// encode64 is Ruby's Base64.encode64: standard base64 in lines of 60
// characters, each ended by a newline.
func encode64(b []byte) string {
	s := base64.StdEncoding.EncodeToString(b)
	var out strings.Builder
	out.Grow(len(s) + len(s)/60 + 1)
	for len(s) > 60 {
		out.WriteString(s[:60])
		out.WriteByte('\n')
		s = s[60:]
	}
	if s != "" {
		out.WriteString(s)
		out.WriteByte('\n')
	}
	return out.String()
}

// blank is Rails' blank? for a string: empty or only white space.
func blank(b []byte) bool {
	return len(bytes.TrimFunc(b, unicode.IsSpace)) == 0
}

// errorsByField are validation errors keyed by attribute, in the order
// they were found: Rails' errors object, rendered with 422.
type errorsByField struct {
	keys []string
	msgs map[string][]string
}

func (e *errorsByField) add(field, msg string) {
	if e.msgs == nil {
		e.msgs = map[string][]string{}
	}
	if _, ok := e.msgs[field]; !ok {
		e.keys = append(e.keys, field)
	}
	e.msgs[field] = append(e.msgs[field], msg)
}

func (e *errorsByField) empty() bool { return len(e.keys) == 0 }

func (e *errorsByField) object() object {
	o := make(object, 0, len(e.keys))
	for _, k := range e.keys {
		o = append(o, member{k, e.msgs[k]})
	}
	return o
}
