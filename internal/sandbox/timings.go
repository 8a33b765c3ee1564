package sandbox

import (
	"reflect"
	"strings"
	"time"
	"unicode"
)

// TimingPart is one part of a VM's start, named after its Timings field
// in snake case (Start: "start", AgentHello: "agent_hello").
type TimingPart struct {
	Name string
	D    time.Duration
}

// Parts lists t's fields in their declared order, so that whoever prints
// or sends timings shows a part added to Timings without being changed.
// Every time.Duration field is a part; other fields are skipped.
func (t Timings) Parts() []TimingPart {
	v := reflect.ValueOf(t)
	typ := v.Type()
	var out []TimingPart
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.IsExported() || f.Type != reflect.TypeFor[time.Duration]() {
			continue
		}
		out = append(out, TimingPart{Name: snakeCase(f.Name), D: time.Duration(v.Field(i).Int())})
	}
	return out
}

func snakeCase(s string) string {
	rs := []rune(s)
	var b strings.Builder
	for i, r := range rs {
		if unicode.IsUpper(r) && i > 0 && (!unicode.IsUpper(rs[i-1]) || i+1 < len(rs) && unicode.IsLower(rs[i+1])) {
			b.WriteByte('_') // a new word: after a lower-case letter, or the last capital of an acronym before one
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}
